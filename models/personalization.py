"""Personalisation head of StyleSync §3.3: dW = MLP_dw(f_f), one offset per style-conv layer."""

from __future__ import annotations

import torch
from torch import nn

from .config import ProfileConfig
from .layers import EqualLinear


class DeltaW(nn.Module):
    """f_f [B, face_dim] -> dW [B, L, w_dim].

    The last layer starts at zero, so an untrained head adds nothing and the general model's output is
    unchanged until personalised optimisation trains it. dW depends on the template only, so an avatar
    caches it beside the face maps.
    """

    def __init__(self, cfg: ProfileConfig) -> None:
        super().__init__()
        self.num_layers, self.w_dim = cfg.num_layers, cfg.w_dim
        self.hidden = EqualLinear(cfg.face_dim, cfg.delta_w_hidden, activate=True)
        self.out = EqualLinear(cfg.delta_w_hidden, cfg.num_layers * cfg.w_dim, zero_init=True)

    def forward(self, f_f: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(f_f)).view(-1, self.num_layers, self.w_dim)
