"""Samples from the training cache (see dataset.py) for the SyncNet expert and for the generator.

Audio/video alignment: video frame k covers samples [640 k, 640 k + 640); the 0.2 s of audio that goes
with the five frames k .. k + 4 is the 16 mel frames from floor(3.2 k) (Wav2Lip's expert convention).
The generator's per-frame windows follow `MelConfig.window_start` (the real-time look-ahead).

Voice augmentation (`GeneratorSamples(voice=...)`): the generator's windows may be heard through a
warped filterbank (`dsp.voice.warped_filterbank`), as if the vocal tract were shorter or longer, and at
another level. Half the samples are GRID s1, one man: an audio encoder trained on them alone reads a
formant's place as part of the mouth's shape, and his own test clips with formants raised 15 % lose a
fifth of their opening correlation with the real mouth. The sync expert's window stays the clip's own
audio, so the sync loss still judges against the true voice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lipstream.avatars.masks import ushape_mask
from lipstream.dsp import MelConfig, mel_windows, melspectrogram
from lipstream.dsp.voice import warped_filterbank

from .config import SYNC_FRAMES
from .dataset import read_index

MIN_OFFSET = 5  # an off-sync pair is at least this many frames (0.2 s) away
VOICE_STEP = 0.05  # warp factors are drawn on this grid, so each clip's warped mel is made a few times only


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

    @cached_property
    def _warped(self) -> dict[float, np.ndarray]:
        return {1.0: self.mel}

    def warped_mel(self, alpha: float, cfg: MelConfig) -> np.ndarray:
        """The clip's log-mel heard through a filterbank warped by `alpha` (made once per alpha). [80, T]"""
        if alpha not in self._warped:
            audio_path = self.path / "audio.npy"
            if not audio_path.is_file():
                raise ValueError(
                    f"{self.path} has no audio.npy (a cache built before the voice augmentation); "
                    "run `lipstream dataset build` again to add it, or train without --voice-augment"
                )
            audio = np.load(audio_path).astype(np.float32)
            self._warped[alpha] = melspectrogram(audio, cfg, warped_filterbank(cfg, alpha))[:, : self.mel.shape[1]]
        return self._warped[alpha]

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
    index = read_index(root)
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


class SyncPairs(Dataset):
    """(faces [5, 3, S, S], mel in sync [1, 80, 16], mel of the same clip shifted by >= 0.2 s).

    The shifted window is the hard negative of the contrastive loss: same voice, same face, wrong time.
    """

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
        shifted = first
        while abs(shifted - first) < MIN_OFFSET or not clip.has_sync_window(shifted):
            shifted = int(rng.integers(0, clip.frames - SYNC_FRAMES + 1))
        faces = to_unit(np.asarray(clip.crops[first : first + SYNC_FRAMES]))
        in_sync = torch.from_numpy(clip.sync_window(first).copy())[None]
        off_sync = torch.from_numpy(clip.sync_window(shifted).copy())[None]
        return faces, in_sync, off_sync


def by_identity(clips: list[Clip]) -> list[list[Clip]]:
    """Clips grouped by the person in them, in first-seen order."""
    people: dict[str, list[Clip]] = {}
    for clip in clips:
        people.setdefault(clip.meta["identity"], []).append(clip)
    return list(people.values())


class ClipDraw:
    """Draws a clip: GRID s1's with probability `grid_share` (there are ~25 times more of them than of the
    other identities' clips, which are longer), and within a group every person equally often, whatever
    their footage. `grid_share` None, or clips of one group only: every person equally often."""

    def __init__(self, clips: list[Clip], grid_share: float | None = None) -> None:
        if not clips:
            raise ValueError("no clips with audio in this split; build the dataset first (lipstream dataset build)")
        grid = [c for c in clips if c.meta["identity"] == "grid_s1"]
        other = [c for c in clips if c.meta["identity"] != "grid_s1"]
        if grid_share is None or not grid or not other:
            self.groups, self.shares = [by_identity(clips)], [1.0]
        else:
            self.groups, self.shares = [by_identity(grid), by_identity(other)], [grid_share, 1.0 - grid_share]

    def __call__(self, rng: np.random.Generator) -> Clip:
        people = self.groups[rng.choice(len(self.groups), p=self.shares)]
        clips = people[rng.integers(len(people))]
        return clips[rng.integers(len(clips))]


class GeneratorSamples(Dataset):
    """Five consecutive target frames with their own mel windows, a reference frame at least 1 s away
    in the same clip, the lower-face mask, and the expert's window for the five frames.

    Clips are drawn by `ClipDraw` (`grid_share`: the probability of a GRID s1 clip).
    `augment` mirrors a sample and changes its brightness and contrast, and with `colour_cast` each
    channel's too (see _augment), the same for all its frames and its reference (mirroring leaves the
    sync with the audio intact). `voice` = (largest warp factor, largest level change in mel units):
    each sample's windows are heard through a filterbank warped by a factor drawn log-uniformly in
    [1 / factor, factor] and shifted in level by up to the change either way (see the module's text).
    """

    def __init__(
        self,
        clips: list[Clip],
        length: int = 100_000,
        seed: int = 0,
        mel_cfg: MelConfig | None = None,
        grid_share: float | None = None,
        augment: bool = False,
        colour_cast: bool = True,
        voice: tuple[float, float] | None = None,
    ) -> None:
        self.draw = ClipDraw(clips, grid_share)  # refuses an empty list
        self.length, self.seed, self.augment, self.colour_cast = length, seed, augment, colour_cast
        self.voice = voice
        self.mel_cfg = mel_cfg or MelConfig()
        size = clips[0].crops.shape[1]
        self.mask = torch.from_numpy(ushape_mask(size))[None]  # [1, S, S]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.draw(rng)
        while True:
            first = int(rng.integers(0, clip.frames - SYNC_FRAMES + 1))
            if clip.has_sync_window(first):
                break
        far = [f for f in range(clip.frames) if abs(f - first) >= 25] or [0]
        reference = far[rng.integers(len(far))]
        windows = mel_windows(self._heard(rng, clip), first, SYNC_FRAMES, self.mel_cfg)  # [5, 80, 16]
        targets = to_unit(np.asarray(clip.crops[first : first + SYNC_FRAMES]))  # [5, 3, S, S]
        reference_face = to_unit(np.asarray(clip.crops[reference]))  # [3, S, S]
        if self.augment:
            targets, reference_face = self._augment(rng, targets, reference_face, self.colour_cast)
        return {
            "targets": targets,
            "mels": torch.from_numpy(windows)[:, None],  # [5, 1, 80, 16]
            "reference": reference_face,
            "mask": self.mask,  # [1, S, S]
            "sync_mel": torch.from_numpy(clip.sync_window(first).copy())[None],  # [1, 80, 16]
        }

    def _heard(self, rng: np.random.Generator, clip: Clip) -> np.ndarray:
        """The clip's mel as this sample's generator hears it: the clip's own, or another voice's."""
        if self.voice is None:
            return clip.mel
        factor, level = self.voice
        alpha = round(float(np.exp(rng.uniform(-np.log(factor), np.log(factor)))) / VOICE_STEP) * VOICE_STEP
        shift = float(rng.uniform(-level, level))
        mel = clip.warped_mel(round(alpha, 2), self.mel_cfg)
        if shift == 0.0:
            return mel
        top = self.mel_cfg.max_abs_value
        # a level change in dB is a constant on the normalised log scale; silence stays at its floor
        return np.where(mel > -top, np.clip(mel + shift, -top, top), mel)

    @staticmethod
    def _augment(
        rng: np.random.Generator, targets: torch.Tensor, reference: torch.Tensor, colour_cast: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same mirror, gain, offset and per-channel colour cast for the frames and their reference:
        a face's colours change, so the generator must take the lips' and skin's colour from the
        reference, not from memory of the identity."""
        if rng.random() < 0.5:
            targets, reference = targets.flip(-1), reference.flip(-1)
        cast = 1.0 if colour_cast else 0.0  # the draws are made either way: the same samples otherwise
        gain = float(rng.uniform(0.8, 1.2))
        gain = gain * (1 + cast * torch.from_numpy(rng.uniform(-0.15, 0.15, 3).astype(np.float32)))
        shift = float(rng.uniform(-0.1, 0.1))
        shift = shift + cast * torch.from_numpy(rng.uniform(-0.08, 0.08, 3).astype(np.float32))
        gain, shift = gain[:, None, None], shift[:, None, None]  # [3, 1, 1]
        return (targets * gain + shift).clamp(-1, 1), (reference * gain + shift).clamp(-1, 1)
