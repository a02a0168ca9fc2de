"""The region upsampler: the `rt` generator's 64x128 mouth region made twice as large, for faces big enough
to show it (the `hd` path of an avatar).

At the 128-px crop a face 260 px wide is shown enlarged about 2x, and no generator at that resolution
can look sharp there: scaling real frames down and back up by 2 leaves about 0.27 of the mouth's
sharpness. This network takes the generated region and the avatar's reference face at twice the crop's
resolution, and returns the region at 128x256: a bilinear enlargement plus the detail it predicts. The
reference carries what the generator cannot see at its size (the lips' edge and colour, the teeth);
its features depend on the avatar only, so they are computed once, like the face encoder's.

Cost per frame at width 32: about 0.27 GMAC, half of the `rt` per-frame graph; every convolution runs
at the generated region's 64x128, and one pixel shuffle makes the 2x output.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lipstream.avatars.options import HD_SCALE

SCALE = HD_SCALE


class RegionUpsampler(nn.Module):
    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.width, self.depth = width, depth
        self.reference_in = nn.Sequential(
            nn.PixelUnshuffle(SCALE),
            nn.Conv2d(3 * SCALE**2, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.region_in = nn.Conv2d(3, width, 3, padding=1)
        self.merge = nn.Conv2d(2 * width, width, 1)
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.to_rgb = nn.Conv2d(width, 3 * SCALE**2, 3, padding=1)
        nn.init.zeros_(self.to_rgb.weight)  # starts as the bilinear enlargement
        nn.init.zeros_(self.to_rgb.bias)

    def encode_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """The reference face's lower half at 2x [B, 3, 2R, 2W] in [-1, 1] -> features [B, width, R, W]."""
        return self.reference_in(reference)

    def forward(self, region: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
        """region: generated [B, 3, R, W] (clamped to [-1, 1] here); reference_features from
        `encode_reference`. Returns [B, 3, 2R, 2W], unclamped."""
        region = region.clamp(-1, 1)
        x = F.leaky_relu(self.region_in(region), 0.2)
        x = F.leaky_relu(self.merge(torch.cat([x, reference_features], dim=1)), 0.2)
        h = x
        for conv in self.body:
            h = F.leaky_relu(conv(h), 0.2)
        detail = F.pixel_shuffle(self.to_rgb(x + h), SCALE)
        return F.interpolate(region, scale_factor=SCALE, mode="bilinear", align_corners=False) + detail

    def config(self) -> dict:
        return {"width": self.width, "depth": self.depth}


class UpsamplerWeightsError(RuntimeError):
    """A file that does not hold region upsampler weights."""


def load_upsampler(path: str | Path, map_location: str = "cpu") -> RegionUpsampler:
    """An upsampler from a file of `{"config": ..., "state": ...}` (fp16 or fp32), in eval mode."""
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
        net = RegionUpsampler(**saved["config"])
        net.load_state_dict({k: v.float() for k, v in saved["state"].items()})
    except Exception as err:  # a missing, truncated or foreign file: torch raises many kinds
        raise UpsamplerWeightsError(
            f"{path} does not hold region upsampler weights ({type(err).__name__}: {err}); "
            "write them with `lipstream train export upsampler`"
        ) from err
    return net.eval().requires_grad_(False)
