"""Avatar preparation: face tracking, alignment, masks, cached encoder features and template frames."""

from .avatar import Avatar
from .errors import AvatarCacheError, AvatarError, SourceError

__all__ = ["Avatar", "AvatarCacheError", "AvatarError", "SourceError"]
