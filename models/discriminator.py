"""Discriminator D: StyleGAN2's residual discriminator over the generated face region."""

from __future__ import annotations

import torch
from torch import nn

from .config import ProfileConfig
from .layers import EqualConv2d, EqualLinear, ResDownBlock


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Appends one channel: the std of features across a group of samples (StyleGAN's mbstd)."""
    batch, ch, height, width = x.shape
    group = min(group_size, batch)
    if batch % group:
        group = 1
    y = x.reshape(group, -1, ch, height, width)  # [G, B/G, C, H, W]
    y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # [B/G]
    y = y.reshape(-1, 1, 1, 1).repeat(group, 1, height, width)  # [B, 1, H, W]
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Image region [B, 3, rows, face_size] in [-1, 1] -> realness logit [B, 1]."""

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        top = cfg.levels - 1
        self.from_rgb = EqualConv2d(3, ch[top], 1, activate=True)
        self.blocks = nn.Sequential(*(ResDownBlock(ch[level], ch[level - 1]) for level in range(top, 0, -1)))
        self.final_conv = EqualConv2d(ch[0] + 1, ch[0], 3, activate=True)
        self.final_fc = nn.Sequential(
            EqualLinear(ch[0] * cfg.level_rows(0) * cfg.level_width(0), ch[0], activate=True),
            EqualLinear(ch[0], 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        rows, width = self.cfg.output_shape
        assert image.shape[1:] == (3, rows, width), f"image {tuple(image.shape)}: expected [B, 3, {rows}, {width}]"
        x = self.blocks(self.from_rgb(image))  # [B, C0, rows_0, width_0]
        x = self.final_conv(minibatch_stddev(x))
        return self.final_fc(x.flatten(1))  # [B, 1]


# The lips' box in the canonical crop, as fractions of its side (rows top, bottom; columns left, right):
# eye line at 0.33 and a crop of 3.4 eye distances put the mouth near 0.7 of the side, 0.3 wide.
MOUTH_BOX = (0.5625, 0.875, 0.25, 0.75)


def mouth_crop(region: torch.Tensor, cfg: ProfileConfig) -> torch.Tensor:
    """The lips' box of generated regions [B, 3, rows, face_size] (the bottom rows of the crop)."""
    top, bottom, left, right = (round(f * cfg.face_size) for f in MOUTH_BOX)
    first_row = cfg.face_size - cfg.region_rows
    return region[:, :, top - first_row : bottom - first_row, left:right]


class MouthDiscriminator(nn.Module):
    """A patch discriminator on the lips' box: [B, 3, h, w] -> (logit map [B, 1, h/8, w/8], features).

    The whole-region discriminator judges the lower face as one; this one only sees the lips, where a
    blurred average of possible mouths is easiest to tell from a real one. Its intermediate features also
    give the feature-matching loss (pix2pixHD), a perceptual distance that needs no pretrained network.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        chans = (width, 2 * width, 4 * width, 4 * width)
        self.from_rgb = EqualConv2d(3, chans[0], 1, activate=True)
        self.stages = nn.ModuleList(
            EqualConv2d(chans[i], chans[i + 1], 3, down=True, activate=True) for i in range(len(chans) - 1)
        )
        self.to_logit = EqualConv2d(chans[-1], 1, 3)

    def forward(self, mouth: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.from_rgb(mouth)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.to_logit(x), features
