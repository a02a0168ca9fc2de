"""Mapping network: w = MLP(concat(f_a, f_f)), broadcast to one style per style-conv layer (W+)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .config import ProfileConfig
from .layers import EqualLinear, normalize_2nd_moment


class Mapping(nn.Module):
    """concat(f_a, f_f) -> W+ = {w + dW_1, ..., w + dW_L} (StyleSync §3.1, §3.3)."""

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        dims = [cfg.audio_dim + cfg.face_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.mlp = nn.Sequential(*(EqualLinear(i, o, activate=True) for i, o in itertools.pairwise(dims)))

    def forward(self, f_a: torch.Tensor, f_f: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
        # f_a: [B, audio_dim]; f_f: [B, face_dim]; delta_w: [B, L, w_dim] personal offsets (zeros
        # for the general model). Returns ws: [B, L, w_dim].
        return self.style(f_a, f_f)[:, None, :] + delta_w

    def style(self, f_a: torch.Tensor, f_f: torch.Tensor) -> torch.Tensor:
        """w [B, w_dim] of f_a [B, audio_dim] and f_f [B, face_dim]. Each part is brought to unit RMS first
        so that neither drowns the other."""
        return self.mlp(torch.cat([normalize_2nd_moment(f_a), normalize_2nd_moment(f_f)], dim=1))

    def amplified(
        self, f_a: torch.Tensor, f_a_rest: torch.Tensor, f_f: torch.Tensor, delta_w: torch.Tensor, gain: torch.Tensor
    ) -> torch.Tensor:
        """W+ with the audio's effect scaled: w_rest + gain (w - w_rest), where w_rest is the style of the
        same face with the audio of silence (f_a_rest [1, audio_dim]); gain [B, 1]: 1 is `forward`, 0 the
        mouth at rest, above 1 the mouth moves more (extrapolation in W). Returns [B, L, w_dim]."""
        w = self.style(f_a, f_f)  # [B, w_dim]
        w_rest = self.style(f_a_rest.expand(f_a.shape[0], -1), f_f)  # [B, w_dim]
        return (w_rest + gain * (w - w_rest))[:, None, :] + delta_w


class StyleSmoothing(nn.Module):
    """Moving-average smoothing of the styles over frames (StyleLipSync's MaLS), in its causal form
    for a live stream: an exponential moving average, ws_t' = a * ws_(t-1)' + (1 - a) * ws_t.

    A centred window would need future audio, which is latency; the exponential average needs only the
    previous frame's smoothed styles. It lags speech by a / (1 - a) frames (a = 0.3: 0.43 frame).
    a = 0 returns ws unchanged, so one graph serves both settings. `a` is an input per sample: a
    stream's first frame (or its first after silence) uses 0.
    """

    def forward(self, ws: torch.Tensor, ws_prev: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
        # ws, ws_prev: [B, L, w_dim]; smoothing: [B, 1] in [0, 1).
        a = smoothing[:, :, None]
        return a * ws_prev + (1 - a) * ws
