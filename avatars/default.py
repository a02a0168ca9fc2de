"""The embedded default avatar, so that `serve` works on a fresh machine with nothing downloaded.

Its template is the portrait of astronaut Eileen Collins that scikit-image ships
(`skimage/data/astronaut.png`, a NASA photograph in the public domain). It is prepared on first use
into the user's avatar cache, and prepared again whenever the model it was made for changes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lipstream.models.weights import load_stylesync
from lipstream.paths import avatars_dir

from .avatar import Avatar
from .errors import AvatarCacheError
from .prepare import prepare_avatar

DEFAULT_NAME = "default"
logger = logging.getLogger("lipstream.avatars")


def default_source() -> Path:
    import skimage.data  # only for the path of the file it ships

    return Path(skimage.data.__file__).resolve().parent / "astronaut.png"


def default_avatar(profile: str = "rt", root: str | Path | None = None, show_progress: bool = False) -> Avatar:
    """The default avatar for `profile`, prepared now if it is missing, stale or corrupt."""
    root = Path(root) if root is not None else avatars_dir()
    name = f"{DEFAULT_NAME}-{profile}"
    _, model_id = load_stylesync(profile)
    try:
        return Avatar.load(root / name, model_id=model_id)
    except AvatarCacheError as err:
        logger.info("preparing the default avatar %s: %s", name, err)
        prepare_avatar(default_source(), name, profile=profile, root=root, show_progress=show_progress)
        return Avatar.load(root / name, model_id=model_id)
