"""Audio encoder E_a: one mel window (0.2 s) -> the audio feature f_a."""

from __future__ import annotations

import torch
from torch import nn

from .config import ProfileConfig
from .layers import EqualConv2d


class ResidualConv(nn.Module):
    """3x3 conv with an identity skip; keeps shape."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = EqualConv2d(ch, ch, 3, activate=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def audio_trunk(channels: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Conv stack [B, 1, 80, 16] -> [B, out_dim, 1, 1] (Wav2Lip's audio-encoder strides)."""
    c1, c2, c3, c4, c5 = channels
    return nn.Sequential(
        EqualConv2d(1, c1, 3, activate=True),  # [B, c1, 80, 16]
        ResidualConv(c1),
        EqualConv2d(c1, c2, 3, stride=(3, 1), activate=True),  # [B, c2, 27, 16]
        ResidualConv(c2),
        EqualConv2d(c2, c3, 3, stride=3, activate=True),  # [B, c3, 9, 6]
        ResidualConv(c3),
        EqualConv2d(c3, c4, 3, stride=(3, 2), activate=True),  # [B, c4, 3, 3]
        ResidualConv(c4),
        EqualConv2d(c4, c5, 3, padding=0, activate=True),  # [B, c5, 1, 1]
        EqualConv2d(c5, out_dim, 1),  # [B, out_dim, 1, 1]
    )


class AudioEncoder(nn.Module):
    """E_a: mel window [B, 1, 80, 16] (normalised log-mel, see dsp.mel) -> f_a [B, audio_dim]."""

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.trunk = audio_trunk(cfg.audio_channels, cfg.audio_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        assert mel.shape[1:] == (1, 80, 16), f"mel {tuple(mel.shape)}: expected [B, 1, 80, 16]"
        return self.trunk(mel).flatten(1)  # [B, audio_dim]
