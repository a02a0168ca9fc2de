"""The embedded avatars, so that `serve` works on a fresh machine with nothing downloaded.

- `default`: a personalised video avatar. Its template is 9 s of GRID speaker s4 (`assets/grid-s4.mp4`,
  three of her sentences, prap2s, prbc8s and prbp7p; GRID audio-visual sentence corpus, Cooke, Barker,
  Cunningham and Shao 2006, CC BY 4.0). For the `rt` profile it carries her personal parameters
  (`assets/grid-s4.rt-channels.pt`: the dW head and the per-channel shift dP of `lipstream personalize
  --delta-p channels`, trained on 120 s of her GRID `template` clips; see `assets/README.md`), so the
  general model serves it beside any other avatar.
- `photo`: the portrait of astronaut Eileen Collins that scikit-image ships (`skimage/data/astronaut.png`,
  a NASA photograph in the public domain), not personalised.

Each is prepared on first use into the user's avatar cache, as `<name>-<profile>`, and prepared again
whenever the model, the template or the personal parameters it was made with change.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lipstream.models.config import get_profile
from lipstream.models.personalization import ChannelParamsError, ChannelPersonalization
from lipstream.models.weights import load_stylesync
from lipstream.paths import avatars_dir

from .avatar import Avatar, sha256_file
from .errors import AvatarCacheError
from .manifest import Manifest
from .prepare import apply_channel_personalization, prepare_avatar, rewrite_manifest

DEFAULT_NAME = "default"
PHOTO_NAME = "photo"
BUILT_IN = (DEFAULT_NAME, PHOTO_NAME)
# Raised when preparation changes what a built-in avatar holds, so that caches made before are redone
# (2: the hd path's detail bank).
REVISION = 2
# The default avatar's motion gain (the frame graph's motion_gain, times the server's): her personalised
# mouth opens 0.64 as far as her real one at 1 and 0.86 at 1.3 on her unseen `test` clip, its opening
# correlation 0.30 -> 0.33, lip-audio r 0.51 -> 0.58, LMD 1.45 -> 1.50 px (avatars/assets/README.md).
DEFAULT_MOTION_GAIN = 1.3
ASSETS = Path(__file__).resolve().parent / "assets"
logger = logging.getLogger("lipstream.avatars")


def photo_source() -> Path:
    import skimage.data  # only for the path of the file it ships

    return Path(skimage.data.__file__).resolve().parent / "astronaut.png"


def default_source() -> Path:
    return ASSETS / "grid-s4.mp4"


def personal_params(name: str, profile: str) -> Path | None:
    """The shipped personal parameters of a built-in avatar for `profile`, if any."""
    path = ASSETS / f"grid-s4.{profile}-channels.pt"
    return path if name == DEFAULT_NAME and path.is_file() else None


def built_in_avatar(
    name: str = DEFAULT_NAME, profile: str = "rt", root: str | Path | None = None, show_progress: bool = False
) -> Avatar:
    """A built-in avatar (`default` or `photo`) for `profile`, prepared now if it is missing, stale or corrupt."""
    if name not in BUILT_IN:
        raise AvatarCacheError(f"no built-in avatar {name!r}; the built-in ones are: {', '.join(BUILT_IN)}")
    root = Path(root) if root is not None else avatars_dir()
    folder = root / f"{name}-{profile}"
    source = default_source() if name == DEFAULT_NAME else photo_source()
    params = personal_params(name, profile)
    made_from = {
        "source_sha256": sha256_file(source),
        "params_sha256": sha256_file(params) if params else None,
        "revision": REVISION,
    }
    _, model_id = load_stylesync(profile)
    try:
        avatar = Avatar.load(folder, model_id=model_id)
        if avatar.manifest.extra.get("built_in") == made_from:
            return avatar
        reason = "its template, personal parameters or preparation changed"
    except AvatarCacheError as err:
        reason = str(err)
    logger.info("preparing the built-in avatar %s: %s", folder.name, reason)
    prepare_avatar(source, folder.name, profile=profile, root=root, show_progress=show_progress)
    extra: dict = {"built_in": made_from}
    if name == DEFAULT_NAME:
        extra["motion_gain"] = DEFAULT_MOTION_GAIN
    if params is not None:
        try:
            personal = ChannelPersonalization.load(params, get_profile(profile))
            about = {
                "weights": params.name,
                "base_model_id": personal.base_model_id,
                "card": "avatars/assets/README.md",
            }
            apply_channel_personalization(folder, personal, extra | {"personalized": about})
            return Avatar.load(folder, model_id=model_id)
        except ChannelParamsError as err:  # general weights other than the shipped ones: it stays general
            logger.warning("the built-in avatar %s is not personalised: %s", folder.name, err)
    rewrite_manifest(folder, Manifest.read(folder), extra=extra)
    return Avatar.load(folder, model_id=model_id)


def default_avatar(profile: str = "rt", root: str | Path | None = None, show_progress: bool = False) -> Avatar:
    """The default avatar for `profile` (see the module notes)."""
    return built_in_avatar(DEFAULT_NAME, profile, root, show_progress)
