"""StyleSync networks (PyTorch, the reference implementation) and their two profiles.

The profiles load at once; the networks (and with them torch) only when first used, so that clients
such as `lipstream talk` and `lipstream serve --help` never pay for torch.
"""

from __future__ import annotations

from importlib import import_module

from .config import PROFILES, ProfileConfig, UnknownProfileError, get_profile

_NETWORKS = {
    "Discriminator": "discriminator",
    "FaceFeatures": "stylesync",
    "StyleSync": "stylesync",
    "SyncNet": "syncnet",
    "SyncNetConfig": "syncnet",
}

__all__ = ["PROFILES", "ProfileConfig", "UnknownProfileError", "get_profile", *_NETWORKS]


def __getattr__(name: str) -> object:
    if name in _NETWORKS:
        return getattr(import_module(f".{_NETWORKS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
