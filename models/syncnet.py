"""SyncNet lip-sync expert: 5 consecutive lower-face crops and their 0.2 s mel window, compared by cosine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .audio_encoder import audio_trunk
from .layers import EqualConv2d, ResDownBlock


@dataclass(frozen=True)
class SyncNetConfig:
    """The expert is shared by both profiles: `hq` faces are resized to its crop size."""

    frames: int = 5  # consecutive video frames per sample (0.2 s at 25 fps)
    crop_rows: int = 32  # lower half of an aligned face, area-resized to 32x64 (from 64x128 for rt)
    crop_width: int = 64
    embed_dim: int = 256
    visual_channels: tuple[int, ...] = (32, 64, 128, 256, 256)  # at 32x64, 16x32, ..., 2x4
    audio_channels: tuple[int, ...] = (32, 64, 128, 256, 256)


class SyncNet(nn.Module):
    """S_v and S_a of StyleSync Eq. 4; `forward` returns the cosine similarity of their embeddings."""

    def __init__(self, cfg: SyncNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or SyncNetConfig()
        vc = cfg.visual_channels
        self.visual = nn.Sequential(
            EqualConv2d(3 * cfg.frames, vc[0], 3, activate=True),
            *(ResDownBlock(vc[i], vc[i + 1]) for i in range(len(vc) - 1)),
            EqualConv2d(vc[-1], vc[-1], 3, down=True, activate=True),
        )
        rows = cfg.crop_rows // 2 ** len(vc)
        width = cfg.crop_width // 2 ** len(vc)
        self.visual_out = EqualConv2d(vc[-1], cfg.embed_dim, 1)
        self.visual_pool = (rows, width)
        self.audio = audio_trunk(cfg.audio_channels, cfg.embed_dim)

    def visual_input(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces [B, frames, 3, S, S] in [-1, 1] -> the visual input [B, 3 * frames, rows, width]:
        their lower halves, area-resized. Training, the generator's sync loss and evaluation all use it."""
        b, f, _, s, _ = faces.shape
        lower = faces[..., s // 2 :, :].reshape(b * f, 3, s - s // 2, s)
        lower = F.interpolate(lower, size=(self.cfg.crop_rows, self.cfg.crop_width), mode="area")
        return lower.reshape(b, f * 3, self.cfg.crop_rows, self.cfg.crop_width)

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: [B, 3 * frames, crop_rows, crop_width], consecutive RGB crops stacked on channels, in [-1, 1].
        c = self.cfg
        assert frames.shape[1:] == (3 * c.frames, c.crop_rows, c.crop_width), (
            f"frames {tuple(frames.shape)}: expected [B, {3 * c.frames}, {c.crop_rows}, {c.crop_width}]"
        )
        x = self.visual(frames)  # [B, C, rows, width]
        x = F.avg_pool2d(x, self.visual_pool)  # [B, C, 1, 1]
        return F.normalize(self.visual_out(x).flatten(1), dim=1)  # [B, embed_dim]

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: [B, 1, 80, 16], the window covering the same 0.2 s as the frames.
        assert mel.shape[1:] == (1, 80, 16), f"mel {tuple(mel.shape)}: expected [B, 1, 80, 16]"
        return F.normalize(self.audio(mel).flatten(1), dim=1)  # [B, embed_dim]

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return (self.embed_video(frames) * self.embed_audio(mel)).sum(dim=1)  # [B] cosine in [-1, 1]
