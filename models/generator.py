"""Generator G: a StyleGAN2 skip generator whose noise inputs carry the face encoder's maps (StyleSync §3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ProfileConfig
from .layers import EqualConv2d, ModulatedConv2d, lrelu

# A layer's per-sample channel shift: (style shift [B, in] added to its style affine's output,
# bias shift [B, out] added to its output bias).
ChannelShift = tuple[torch.Tensor, torch.Tensor]


def channel_shift_layout(cfg: ProfileConfig) -> list[tuple[str, int]]:
    """The generator parameters that a per-channel shift (a personalised avatar's dP, `delta_p`) moves,
    in the order of the flat vector the frame graph takes: per layer, its style affine's bias and its
    output bias; the style convs of a level, then its toRGB. (parameter name, size) pairs."""
    layout = []
    for level, out_ch in enumerate(cfg.channels):
        in_ch = cfg.channels[max(level - 1, 0)]
        for index, layer_in in ((2 * level, in_ch), (2 * level + 1, out_ch)):
            layout += [(f"convs.{index}.conv.modulation.affine.bias", layer_in), (f"convs.{index}.bias", out_ch)]
        layout += [(f"to_rgbs.{level}.conv.modulation.affine.bias", out_ch), (f"to_rgbs.{level}.bias", 3)]
    return layout


def channel_shift_size(cfg: ProfileConfig) -> int:
    """Values in a per-channel shift (3919 for `rt`)."""
    return sum(size for _, size in channel_shift_layout(cfg))


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

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, face_map: torch.Tensor, shift: ChannelShift | None = None
    ) -> torch.Tensor:
        # x: [B, in, h, w]; w: [B, w_dim]; face_map: [B, noise_ch, h', w'] at this layer's output size.
        style_shift, bias_shift = shift or (None, None)
        out = self.conv(x, w, style_shift) + self.strength(face_map) + self.bias
        return lrelu(out if bias_shift is None else out + bias_shift[:, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation (StyleGAN2's tRGB)."""

    def __init__(self, in_ch: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, shift: ChannelShift | None = None) -> torch.Tensor:
        # [B, C, h, w] -> [B, 3, h, w]
        style_shift, bias_shift = shift or (None, None)
        out = self.conv(x, w, style_shift) + self.bias
        return out if bias_shift is None else out + bias_shift[:, :, None, None]


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
        self._shift_sizes = [size for _, size in channel_shift_layout(cfg)]  # delta_p cut per layer

    def forward(
        self, ws: torch.Tensor, face_maps: Sequence[torch.Tensor], shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        # ws: [B, L, w_dim] one style per style-conv layer (W+).
        # face_maps: L tensors [B, noise_ch, rows_l, width_l] (Eq. 1 already applied by the encoder).
        # shift: [B, channel_shift_size] each sample's per-channel parameter shift, or None (none).
        cfg = self.cfg
        batch = ws.shape[0]
        expected_ws = (cfg.num_layers, cfg.w_dim)
        assert ws.shape[1:] == expected_ws, f"ws {tuple(ws.shape)}: expected [B, {cfg.num_layers}, {cfg.w_dim}]"
        assert len(face_maps) == cfg.num_layers, f"expected {cfg.num_layers} face maps, got {len(face_maps)}"
        for layer, (fmap, shape) in enumerate(zip(face_maps, cfg.face_map_shapes(), strict=True)):
            assert fmap.shape[1:] == shape, f"face map {layer}: {tuple(fmap.shape)}, expected [B, {shape}]"
        shifts = self._split_shift(shift)
        x = self.const.expand(batch, -1, -1, -1)  # [B, C0, rows_0, width_0]
        rgb = None
        for level, to_rgb in enumerate(self.to_rgbs):
            a, b = 2 * level, 2 * level + 1
            x = self.convs[a](x, ws[:, a], face_maps[a], shifts[3 * level])
            x = self.convs[b](x, ws[:, b], face_maps[b], shifts[3 * level + 1])  # [B, C_level, rows, width]
            y = to_rgb(x, ws[:, b], shifts[3 * level + 2])
            rgb = y if rgb is None else y + F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False)
        return rgb  # [B, 3, region_rows, face_size]

    def _split_shift(self, shift: torch.Tensor | None) -> list[ChannelShift | None]:
        """The flat per-channel shift cut into each layer's (style, bias) pair, in layer order
        (two style convs, then the toRGB, per level)."""
        count = 3 * self.cfg.levels
        if shift is None:
            return [None] * count
        sizes = self._shift_sizes
        assert shift.shape[1:] == (sum(sizes),), f"shift {tuple(shift.shape)}: expected [B, {sum(sizes)}]"
        parts = torch.split(shift, sizes, dim=1)
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(count)]
