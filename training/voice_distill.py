"""`lipstream train voice`: the audio encoder taught to hear a voice with other formants as it hears the
voice it learnt (self-distillation across vocal-tract lengths).

Why: the general model's mouth follows GRID s1's voice, not a woman's. Cross-driving showed where the
loss is (`lipstream evaluate --video CLIP --avatar A`, opening correlation with the real mouth, 30 s
each): GRID s4's face driven by GRID s1's voice 0.71, his own face 0.70; his face driven by her voice
0.34, her own 0.33. The face side carries over to a new face; the audio side does not carry over to a
new voice. Resynthesised through the WORLD vocoder, his voice keeps its correlation with his pitch
doubled (0.77 -> 0.75 at the best lag) and loses it with his formants raised 20 % (0.42): it is the
formants' place that the encoder reads as the mouth's shape.

Training the whole model on warped voices (`train generator --voice-augment`) taught the mouth to hedge:
it opened less for every voice (model card). Here the target is not the video but the encoder itself:
a frozen copy (the teacher) hears each window as it was recorded, and the student hears the same
window through a filterbank warped by a factor drawn log-uniformly in [1 / warp, warp]
(`dsp.voice.warped_filterbank`, as if the speaker's vocal tract were shorter or longer), and learns to
give the teacher's feature. The student also hears the window unwarped and must keep the teacher's
answer there. Both hear the voice after the clip-wide form of the sessions' voice normalisation
(`dsp.voice.normalise_speech`), as a session does once it has heard its speaker. The loss is on the
features as the mapping sees them (unit RMS, `normalize_2nd_moment`); the mapping, the face encoder and
the generator stay as they were, so how a mouth is drawn cannot change.

Resumable like the other jobs (`train_chunk`): checkpoint, log.jsonl, loss curves; samples are a chart
of the student's and the teacher's distance at each warp on fixed GRID s1 `val` windows.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lipstream.dsp import MelConfig, mel_windows
from lipstream.dsp.voice import DEFAULT_REFERENCE, VoiceReference, normalise_speech
from lipstream.models.layers import normalize_2nd_moment
from lipstream.models.stylesync import StyleSync
from lipstream.models.weights import load_stylesync

from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import VoiceDistillConfig
from .generator_train import train_chunk
from .loaders import VOICE_STEP, Clip, ClipDraw, load_clips

CHART_WARPS = (0.8, 0.9, 1.0, 1.1, 1.25)  # the warps of the sample chart and of validation


def warp_grid(warp: float) -> np.ndarray:
    """The factors a sample's warp is drawn from: VOICE_STEP apart in [1 / warp, warp] (each clip's warped
    mel is made once per factor)."""
    low = np.ceil(1 / warp / VOICE_STEP - 1e-9) * VOICE_STEP
    return np.round(np.arange(low, warp + 1e-9, VOICE_STEP), 2)


class WarpedWindows(Dataset):
    """(window as recorded [1, 80, 16], the same window through a warped filterbank [1, 80, 16]), both
    normalised to the learnt voice (`normalise_speech`). Clips are drawn as the generator's samples are
    (`ClipDraw`: GRID s1 with probability `grid_share`, every other person equally often); the warp
    log-uniformly in [1 / warp, warp], on the grid of `warp_grid`."""

    def __init__(
        self,
        clips: list[Clip],
        reference: VoiceReference,
        warp: float,
        length: int,
        seed: int = 0,
        grid_share: float | None = 0.5,
        mel_cfg: MelConfig | None = None,
    ) -> None:
        self.draw = ClipDraw(clips, grid_share)
        self.reference, self.length, self.seed = reference, length, seed
        self.mel_cfg = mel_cfg or MelConfig()
        self.grid = warp_grid(warp)
        # log-uniform on the grid: each factor weighted by the width of log-space it stands for
        edges = np.log(np.concatenate([[1 / warp], (self.grid[1:] + self.grid[:-1]) / 2, [warp]]))
        self.weights = np.diff(edges) / np.diff(edges).sum()
        self._heard: dict[tuple[str, float], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def heard(self, clip: Clip, alpha: float) -> np.ndarray:
        """The clip's log-mel through the filterbank warped by alpha, normalised. [80, T]"""
        key = (str(clip.path), alpha)
        if key not in self._heard:
            self._heard[key] = normalise_speech(clip.warped_mel(alpha, self.mel_cfg), self.reference)
        return self._heard[key]

    def pair(self, clip: Clip, frame: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        windows = [mel_windows(self.heard(clip, a), frame, 1, self.mel_cfg) for a in (1.0, alpha)]  # [1, 80, 16]
        return tuple(torch.from_numpy(w) for w in windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.draw(rng)
        alpha = float(self.grid[rng.choice(len(self.grid), p=self.weights)])
        return self.pair(clip, int(rng.integers(clip.frames)), alpha)


def feature(model: StyleSync, windows: torch.Tensor) -> torch.Tensor:
    """f_a as the mapping takes it (unit RMS). windows: [B, 1, 80, 16] -> [B, audio_dim]"""
    return normalize_2nd_moment(model.audio_encoder(windows))


class VoiceDistiller:
    """Teacher (frozen) and student StyleSync; only the student's audio encoder learns."""

    def __init__(self, cache: Path, out: Path, config: VoiceDistillConfig, resume: bool = False) -> None:
        self.cache, self.out, self.config = cache, out, config
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.teacher = load_stylesync("rt", config.init)[0].to(self.device)
        self.model = copy.deepcopy(self.teacher).requires_grad_(False)
        self.model.audio_encoder.requires_grad_(True).train()
        self.opt = torch.optim.Adam(self.model.audio_encoder.parameters(), lr=config.lr, betas=(0.9, 0.99))
        self.reference = VoiceReference.from_json(config.reference or DEFAULT_REFERENCE)
        self.step = 0
        out.mkdir(parents=True, exist_ok=True)
        if resume and (state := load_checkpoint(out / CHECKPOINT, self.device)) is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            # the teacher the run started with, even if the shipped weights have changed since
            self.teacher.audio_encoder.load_state_dict(state["teacher_audio_encoder"])
            self.step = state["step"]

    def save(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step}
        state["teacher_audio_encoder"] = self.teacher.audio_encoder.state_dict()
        save_checkpoint(state | {"config": asdict(self.config)}, self.out / CHECKPOINT)

    def distances(self, recorded: torch.Tensor, warped: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean squared distance of the student's features, warped and not, from the teacher's."""
        with torch.no_grad():
            target = feature(self.teacher, recorded)
        return {
            "warped": (feature(self.model, warped) - target).pow(2).mean(),
            "recorded": (feature(self.model, recorded) - target).pow(2).mean(),
        }

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        recorded, warped = (b.to(self.device) for b in batch)
        losses = self.distances(recorded, warped)
        total = losses["warped"] + self.config.lambda_recorded * losses["recorded"]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.step += 1
        return {k: v.item() for k, v in losses.items()} | {"total": total.item()}

    @torch.no_grad()
    def by_warp(self, windows: WarpedWindows, frames: list[tuple[Clip, int]]) -> dict[str, float]:
        """Per chart warp: the student's distance from the teacher's unwarped feature, and the teacher's
        own (what the student started from)."""
        self.model.eval()
        out = {}
        for alpha in CHART_WARPS:
            pairs = [windows.pair(clip, frame, alpha) for clip, frame in frames]
            recorded, warped = (torch.stack(p).to(self.device) for p in zip(*pairs, strict=True))
            target = feature(self.teacher, recorded)
            out[f"student_{alpha}"] = (feature(self.model, warped) - target).pow(2).mean().item()
            out[f"teacher_{alpha}"] = (feature(self.teacher, warped) - target).pow(2).mean().item()
        self.model.audio_encoder.train()
        return out

    def write_samples(self, fixed: tuple[WarpedWindows, list[tuple[Clip, int]]], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scores = self.by_warp(*fixed)
        fig, ax = plt.subplots(figsize=(5, 3))
        for who in ("teacher", "student"):
            ax.plot(CHART_WARPS, [scores[f"{who}_{a}"] for a in CHART_WARPS], marker="o", label=who)
        ax.set_xlabel("formant warp")
        ax.set_ylabel("distance from the teacher, unwarped")
        ax.set_title(f"GRID s1 val windows, step {self.step}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)

    def run(self, log: bool = True) -> dict:
        c = self.config
        clips = load_clips(self.cache, "train")
        data = WarpedWindows(clips, self.reference, c.warp, c.steps * c.batch, c.seed, c.grid_share)
        loader = DataLoader(Subset(data, range(self.step * c.batch, len(data))), batch_size=c.batch, drop_last=True)
        val = load_clips(self.cache, "val", {"grid_s1"})[: c.validate_clips] or clips[: c.validate_clips]
        rng = np.random.default_rng(c.seed)
        frames = [(clip, int(f)) for clip in val for f in rng.integers(0, clip.frames, 32)]
        val_windows = WarpedWindows(val, self.reference, c.warp, 0, c.seed, None)

        def validation() -> dict:
            if self.step % c.validate_every:
                return {}
            return {f"val_{k}": v for k, v in self.by_warp(val_windows, frames).items() if k.startswith("student")}

        return train_chunk(
            self, iter(loader), (val_windows, frames), log, validation, lambda: self.step % c.validate_every == 0
        )
