"""Where lipstream keeps what it makes for the user: the cache folder and the prepared avatars."""

from __future__ import annotations

import os
import re
from pathlib import Path

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class InvalidNameError(ValueError):
    """A name that could escape its folder or is not portable."""


def cache_dir() -> Path:
    """$LIPSTREAM_CACHE, else $XDG_CACHE_HOME/lipstream, else ~/.cache/lipstream."""
    if os.environ.get("LIPSTREAM_CACHE"):
        return Path(os.environ["LIPSTREAM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lipstream"


def avatars_dir() -> Path:
    """$LIPSTREAM_AVATARS, else <cache>/avatars."""
    return Path(os.environ["LIPSTREAM_AVATARS"]) if os.environ.get("LIPSTREAM_AVATARS") else cache_dir() / "avatars"


def check_name(name: str, what: str = "avatar name") -> str:
    """Letters, digits, '_', '-' and '.', starting with a letter or digit, at most 64 characters."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (no slashes, no '..')"
        )
    return name
