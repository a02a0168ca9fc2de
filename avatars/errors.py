"""Errors of avatar preparation and loading; each message says what was wrong and what to do."""

from __future__ import annotations


class AvatarError(Exception):
    """Base class: the CLI prints the message alone (no traceback) and exits with status 2."""


class SourceError(AvatarError):
    """The source video or image cannot be used (unreadable, empty, no usable face)."""


class AvatarCacheError(AvatarError):
    """A prepared avatar folder is missing, stale or corrupt."""
