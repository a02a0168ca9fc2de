"""Face encoder E_face: masked target + reference -> one map per generator layer and the vector f_f."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ProfileConfig
from .layers import EqualConv2d, EqualLinear, ResDownBlock


class FaceEncoder(nn.Module):
    """E_face of StyleSync §3.1 (mask-based spatial information encoding).

    The target's lower face is masked out, the reference is concatenated (6 channels), and a residual
    pyramid encodes them. At each level, two 1x1 heads make the maps for that level's two style-conv
    layers, cropped to the rows the generator makes. Maps of the higher-resolution half of the layers
    (l > floor(L/2)) are zeroed under the mask, F'_l = (1 - M) * F_l (Eq. 1), so the reference cannot
    dictate the mouth shape. The lowest level gives the bottleneck vector f_f.

    Everything here depends on the template only, so an avatar runs it once per frame and caches it.
    """

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder_channels
        top = cfg.levels - 1
        self.stem = EqualConv2d(6, enc[top], 1, activate=True)
        self.down = nn.ModuleList(ResDownBlock(enc[level], enc[level - 1]) for level in range(top, 0, -1))
        self.heads = nn.ModuleList(
            EqualConv2d(enc[cfg.layer_level(layer)], cfg.noise_channels[cfg.layer_level(layer)], 1)
            for layer in range(cfg.num_layers)
        )
        self.bottleneck_conv = EqualConv2d(enc[0], enc[0], 3, activate=True)
        self.bottleneck_fc = EqualLinear(enc[0] * cfg.base_width**2, cfg.face_dim)

    def forward(
        self, target: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        # target: [B, 3, S, S] aligned face to be re-mouthed, in [-1, 1].
        # reference: [B, 3, S, S] another frame of the same person, in [-1, 1].
        # mask: [B, 1, S, S] lower-face mask M, 1 where the mouth region is erased.
        cfg = self.cfg
        size = cfg.face_size
        for name, t, ch in (("target", target, 3), ("reference", reference, 3), ("mask", mask, 1)):
            assert t.shape[1:] == (ch, size, size), f"{name} {tuple(t.shape)}: expected [B, {ch}, {size}, {size}]"
        x = torch.cat([target * (1.0 - mask), reference], dim=1)  # [B, 6, S, S]
        x = self.stem(x)
        features = [x]  # highest level first
        for block in self.down:
            x = block(x)
            features.append(x)
        features.reverse()  # now features[level]: [B, enc[level], width_level, width_level]

        maps = []
        for layer, head in enumerate(self.heads):
            level = cfg.layer_level(layer)
            rows, width = cfg.level_rows(level), cfg.level_width(level)
            fmap = head(features[level][:, :, width - rows :, :])  # [B, noise_ch, rows, width]
            if layer >= cfg.masked_from_layer:
                # Max-pooling keeps a cell masked if any pixel under it is, so nothing leaks at the edge.
                level_mask = F.max_pool2d(mask, kernel_size=size // width)[:, :, width - rows :, :]
                fmap = fmap * (1.0 - level_mask)
            maps.append(fmap)
        f_f = self.bottleneck_fc(self.bottleneck_conv(features[0]).flatten(1))  # [B, face_dim]
        return maps, f_f
