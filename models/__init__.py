"""StyleSync networks (PyTorch, the reference implementation) and their two profiles."""

from .config import PROFILES, ProfileConfig, UnknownProfileError, get_profile
from .discriminator import Discriminator
from .stylesync import FaceFeatures, StyleSync
from .syncnet import SyncNet, SyncNetConfig

__all__ = [
    "PROFILES",
    "Discriminator",
    "FaceFeatures",
    "ProfileConfig",
    "StyleSync",
    "SyncNet",
    "SyncNetConfig",
    "UnknownProfileError",
    "get_profile",
]
