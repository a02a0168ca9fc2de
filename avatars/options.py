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
HD_SCALE = 2  # the hd path's crop and generated region, relative to the profile's (models/upsampler.py)
HD_MODES = ("auto", "on", "off")  # prepare's choice of the hd path: by the face's size, or as told
# auto turns the hd path on when the face is at least this large in the source: the 2x crop is
# a reduction of the source (crop pixels per source pixel, median over the frames) of at most this.
HD_MAX_CROP_SCALE = 0.9
