"""Samples from the training cache (see dataset.py) for the SyncNet expert and for the generator.

Audio/video alignment: video frame k covers samples [640 k, 640 k + 640); the 0.2 s of audio that goes
with the five frames k .. k + 4 is the 16 mel frames from floor(3.2 k) (Wav2Lip's expert convention).
The generator's per-frame windows follow `MelConfig.window_start` (the real-time look-ahead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lipstream.avatars.masks import ushape_mask
from lipstream.dsp import MelConfig, mel_windows

from .dataset import INDEX

SYNC_FRAMES = 5
MIN_OFFSET = 5  # an off-sync pair is at least this many frames (0.2 s) away


@dataclass
class Clip:
    path: Path
    meta: dict

    @cached_property
    def crops(self) -> np.ndarray:  # [N, S, S, 3] uint8, memory-mapped
        return np.load(self.path / "crops.npy", mmap_mode="r")

    @cached_property
    def mel(self) -> np.ndarray:  # [80, T] float32
        return np.load(self.path / "mel.npy").astype(np.float32)

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    def sync_window(self, first: int) -> np.ndarray:
        """The 0.2 s of mel going with frames first .. first + 4. [80, 16]"""
        start = first * 16 // 5
        return self.mel[:, start : start + 16]

    def has_sync_window(self, first: int) -> bool:
        return first >= 0 and first + SYNC_FRAMES <= self.frames and first * 16 // 5 + 16 <= self.mel.shape[1]


def load_clips(root: Path, split: str, identities: set[str] | None = None) -> list[Clip]:
    index = json.loads((root / INDEX).read_text())
    clips = [
        Clip(root / clip_id, meta)
        for clip_id, meta in sorted(index["clips"].items())
        if meta["split"] == split and meta["has_audio"] and (identities is None or meta["identity"] in identities)
    ]
    return [c for c in clips if c.frames >= 3 * SYNC_FRAMES]


def to_unit(images: np.ndarray) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float in [-1, 1]."""
    tensor = torch.from_numpy(np.array(images, dtype=np.float32)) / 127.5 - 1.0
    return tensor.movedim(-1, -3)


def lower_half(crops: np.ndarray, rows: int = 64, width: int = 128) -> torch.Tensor:
    """Consecutive crops [F, S, S, 3] -> the expert's visual input [3 F, rows, width] (lower half)."""
    size = crops.shape[1]
    faces = to_unit(crops[:, size // 2 :])  # [F, 3, S/2, S]
    if faces.shape[-2:] != (rows, width):
        faces = torch.nn.functional.interpolate(faces, size=(rows, width), mode="area")
    return faces.reshape(-1, rows, width)


class SyncPairs(Dataset):
    """(frames [15, 64, 128], mel [1, 80, 16], label) with label 1 for in-sync, 0 for a shifted window."""

    def __init__(self, clips: list[Clip], length: int = 100_000, seed: int = 0) -> None:
        if not clips:
            raise ValueError("no clips with audio in this split; build the dataset first (lipstream dataset build)")
        self.clips, self.length, self.seed = clips, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[rng.integers(len(self.clips))]
        while True:
            first = int(rng.integers(0, clip.frames - SYNC_FRAMES + 1))
            if clip.has_sync_window(first):
                break
        in_sync = bool(rng.integers(2))
        audio_at = first
        while not in_sync and (abs(audio_at - first) < MIN_OFFSET or not clip.has_sync_window(audio_at)):
            audio_at = int(rng.integers(0, clip.frames - SYNC_FRAMES + 1))
        frames = lower_half(np.asarray(clip.crops[first : first + SYNC_FRAMES]))
        mel = torch.from_numpy(clip.sync_window(audio_at).copy())[None]
        return frames, mel, torch.tensor(float(in_sync))


class GeneratorSamples(Dataset):
    """Five consecutive target frames with their own mel windows, a reference frame at least 1 s away
    in the same clip, the lower-face mask, and the expert's window for the five frames."""

    def __init__(
        self, clips: list[Clip], length: int = 100_000, seed: int = 0, mel_cfg: MelConfig | None = None
    ) -> None:
        if not clips:
            raise ValueError("no clips with audio in this split; build the dataset first (lipstream dataset build)")
        self.clips, self.length, self.seed = clips, length, seed
        self.mel_cfg = mel_cfg or MelConfig()
        size = clips[0].crops.shape[1]
        self.mask = torch.from_numpy(ushape_mask(size))[None]  # [1, S, S]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[rng.integers(len(self.clips))]
        while True:
            first = int(rng.integers(0, clip.frames - SYNC_FRAMES + 1))
            if clip.has_sync_window(first):
                break
        far = [f for f in range(clip.frames) if abs(f - first) >= 25] or [0]
        reference = far[rng.integers(len(far))]
        windows = mel_windows(clip.mel, first, SYNC_FRAMES, self.mel_cfg)  # [5, 80, 16]
        return {
            "targets": to_unit(np.asarray(clip.crops[first : first + SYNC_FRAMES])),  # [5, 3, S, S]
            "mels": torch.from_numpy(windows)[:, None],  # [5, 1, 80, 16]
            "reference": to_unit(np.asarray(clip.crops[reference])),  # [3, S, S]
            "mask": self.mask,  # [1, S, S]
            "sync_mel": torch.from_numpy(clip.sync_window(first).copy())[None],  # [1, 80, 16]
        }
