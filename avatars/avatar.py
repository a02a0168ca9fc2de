"""A prepared avatar folder: its manifest, checksums, and loading with validation.

Layout (all written by `lipstream prepare`):
    manifest.json            what is here, for which model, and the sha256 of every other file
    frames/NNNNNN.jpg        template frames at 25 fps (shown untouched while nobody speaks)
    crops.npy                [N, S, S, 3] uint8 aligned face crops
    masks.npy                [N, S, S] uint8 lower-face masks given to the face encoder (1 = erased)
    paste_masks.npy          [N, S, S] uint8 feathered paste weights (255 = generated pixel)
    transforms.npy           [N, 2, 3] float64 frame -> crop similarity transforms (smoothed)
    landmarks.npy            [N, 478, 2] float32 face landmarks in frame pixels
    features/maps_LL.npy     [N, C, h, w] float16 face-encoder map of style layer LL (Eq. 1 applied)
    features/f_f.npy         [N, face_dim] float32 face feature
    features/delta_w.npy     [N, L, w_dim] float32 personal style offsets (zeros until personalised)
    features/delta_p.npy     [P] float32 personal per-channel generator shift (`personalize --delta-p
                             channels`; absent: none, the general model)
    idle_loop.npy            [M] int32 frame order of the idle loop (ping-pong: no jump at the loop point)
    audio.wav                the template's audio, 16 kHz mono 16-bit
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AvatarCacheError
from .manifest import MANIFEST, Manifest

CHANNEL_SHIFT = "features/delta_p.npy"
FORMAT_VERSION = 2  # 2: no silent renderings (idle shows the template frames themselves)


def frame_file(folder: Path, index: int) -> Path:
    """Where an avatar folder keeps template frame `index` (JPEG)."""
    return folder / "frames" / f"{index:06d}.jpg"


def read_frame(folder: Path, index: int) -> np.ndarray:
    """Template frame `index` of an avatar folder, as the server shows it. [H, W, 3] uint8 RGB"""
    import cv2  # not needed to read a manifest

    return cv2.cvtColor(cv2.imread(str(frame_file(folder, index))), cv2.COLOR_BGR2RGB)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rebuild_command(manifest: dict, name: str) -> str:
    source = manifest.get("source", {}).get("path", "SOURCE")
    return (
        f"lipstream prepare {shlex.quote(str(source))} --name {shlex.quote(name)} "
        f"--profile {manifest.get('profile', 'rt')} --mask {manifest.get('mask', 'ushape')}"
    )


@dataclass
class Avatar:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frame_count(self) -> int:
        return self.manifest.frame_count

    def frame_path(self, index: int) -> Path:
        return frame_file(self.path, index)

    def array(self, relative: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.path / relative, mmap_mode="r" if mmap else None)

    def channel_shift(self) -> np.ndarray:
        """The avatar's per-channel generator shift (the frame graph's `delta_p`): its own after
        `personalize --delta-p channels`, zeros otherwise. [P] float32"""
        from lipstream.models.config import get_profile
        from lipstream.models.generator import channel_shift_size

        if CHANNEL_SHIFT in self.manifest.files:
            return np.load(self.path / CHANNEL_SHIFT).astype(np.float32)
        return np.zeros(channel_shift_size(get_profile(self.manifest.profile)), np.float32)

    def feature_maps(self) -> list[np.ndarray]:
        """The L cached face maps, each [N, C, h, w] float16 (memory-mapped)."""
        return [self.array(f"features/maps_{layer:02d}.npy") for layer in range(self.manifest.style_layers)]

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None, verify: bool = True) -> Avatar:
        """Opens a prepared avatar; refuses a missing, stale or corrupt one with the command that rebuilds it.

        model_id: the id of the model that will use the cached features (see models.weights); a
        different one means the features are stale. verify: check every file's sha256.
        """
        path = Path(path)
        name = path.name
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise AvatarCacheError(
                f"{path} is not a prepared avatar (no {MANIFEST}); prepare it with: "
                f"lipstream prepare SOURCE --name {shlex.quote(name)}"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise AvatarCacheError(
                f"avatar {name!r}: {MANIFEST} is corrupt ({err}); rebuild it with: "
                f"lipstream prepare SOURCE --name {shlex.quote(name)}"
            ) from err
        rebuild = rebuild_command(manifest, name)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise AvatarCacheError(
                f"avatar {name!r} has format version {manifest.get('format_version')!r}, this lipstream reads "
                f"version {FORMAT_VERSION}; rebuild it with: {rebuild}"
            )
        if model_id is not None and manifest.get("model_id") != model_id:
            raise AvatarCacheError(
                f"avatar {name!r} was prepared for model {manifest.get('model_id')!r} but the model in use is "
                f"{model_id!r}, so its cached features are stale; rebuild it with: {rebuild}"
            )
        try:
            typed = Manifest.from_json(manifest)
        except ValueError as err:
            raise AvatarCacheError(
                f"avatar {name!r}: {MANIFEST} is not usable ({err}); rebuild it with: {rebuild}"
            ) from err
        if verify:
            for relative, expected in typed.files.items():
                file = path / relative
                if not file.is_file():
                    raise AvatarCacheError(f"avatar {name!r}: {relative} is missing; rebuild it with: {rebuild}")
                if sha256_file(file) != expected:
                    raise AvatarCacheError(
                        f"avatar {name!r}: {relative} does not match its checksum (corrupt or edited); "
                        f"rebuild it with: {rebuild}"
                    )
        return cls(path, typed)
