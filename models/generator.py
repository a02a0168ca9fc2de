"""Generator G: a StyleGAN2 skip generator whose noise inputs carry the face encoder's maps (StyleSync §3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ProfileConfig
from .layers import EqualConv2d, ModulatedConv2d, lrelu


class StyledConv(nn.Module):
    """One style-conv layer: modulated 3x3 conv, face-map injection in the noise slot, bias, lrelu.

    StyleGAN2 adds single-channel noise times a learned scalar strength here. StyleSync puts a
    feature map of the face there instead; its learned strength is a 1x1 mix from the map's
    channels to the layer's channels (per-channel strengths, generalised).
    """

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, noise_ch: int, up: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, up=up)
        self.strength = EqualConv2d(noise_ch, out_ch, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, face_map: torch.Tensor) -> torch.Tensor:
        # x: [B, in, h, w]; w: [B, w_dim]; face_map: [B, noise_ch, h', w'] at this layer's output size.
        return lrelu(self.conv(x, w) + self.strength(face_map) + self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation (StyleGAN2's tRGB)."""

    def __init__(self, in_ch: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> [B, 3, h, w]
        return self.conv(x, w) + self.bias


class Generator(nn.Module):
    """G(N, W): W+ styles and the L face maps -> the generated face region in [-1, 1] (unclamped)."""

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.const = nn.Parameter(torch.randn(1, ch[0], cfg.level_rows(0), cfg.level_width(0)))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for level in range(cfg.levels):
            in_ch = ch[max(level - 1, 0)]
            noise = cfg.noise_channels[level]
            self.convs.append(StyledConv(in_ch, ch[level], cfg.w_dim, noise, up=level > 0))
            self.convs.append(StyledConv(ch[level], ch[level], cfg.w_dim, noise, up=False))
            self.to_rgbs.append(ToRGB(ch[level], cfg.w_dim))

    def forward(self, ws: torch.Tensor, face_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        # ws: [B, L, w_dim] one style per style-conv layer (W+).
        # face_maps: L tensors [B, noise_ch, rows_l, width_l] (Eq. 1 already applied by the encoder).
        cfg = self.cfg
        batch = ws.shape[0]
        expected_ws = (cfg.num_layers, cfg.w_dim)
        assert ws.shape[1:] == expected_ws, f"ws {tuple(ws.shape)}: expected [B, {cfg.num_layers}, {cfg.w_dim}]"
        assert len(face_maps) == cfg.num_layers, f"expected {cfg.num_layers} face maps, got {len(face_maps)}"
        for layer, (fmap, shape) in enumerate(zip(face_maps, cfg.face_map_shapes(), strict=True)):
            assert fmap.shape[1:] == shape, f"face map {layer}: {tuple(fmap.shape)}, expected [B, {shape}]"
        x = self.const.expand(batch, -1, -1, -1)  # [B, C0, rows_0, width_0]
        rgb = None
        for level, to_rgb in enumerate(self.to_rgbs):
            a, b = 2 * level, 2 * level + 1
            x = self.convs[a](x, ws[:, a], face_maps[a])
            x = self.convs[b](x, ws[:, b], face_maps[b])  # [B, C_level, rows_level, width_level]
            y = to_rgb(x, ws[:, b])
            rgb = y if rgb is None else y + F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False)
        return rgb  # [B, 3, region_rows, face_size]
