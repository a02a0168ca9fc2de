"""What preparing an avatar can be asked for, with the defaults: one home for `prepare_avatar` and the CLI
that offers it (nothing here imports torch, OpenCV or mediapipe)."""

from __future__ import annotations

MASK_KINDS = ("ushape", "pose")  # the lower-face region the generator replaces (masks.py)
DEFAULT_MASK = "ushape"
MAX_SECONDS = 10.0  # of the template video used
SMOOTHING_SIGMA = 2.0  # Gaussian sigma, in frames, of the crop-transform smoothing
REFERENCE_PERCENTILE = 75.0  # the reference frame's mouth opening, as a percentile of the clip's
IDLE_LOOPS = ("quiet", "all")  # the stillest QUIET_SECONDS back and forth, or every frame
DEFAULT_IDLE_LOOP = "quiet"
QUIET_SECONDS = 4.0  # length of the stretch a "quiet" idle loop plays back and forth
