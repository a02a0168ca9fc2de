"""Personalisation head of StyleSync §3.3: dW = MLP_dw(f_f), one offset per style-conv layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ProfileConfig
from .generator import channel_shift_layout, channel_shift_size
from .layers import EqualLinear

KIND = "lipstream-channel-personalization"


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


def channel_shift_of(generator: nn.Module, general: dict[str, torch.Tensor]) -> torch.Tensor:
    """A generator tuned only in its per-channel parameters, as the flat shift from the general one
    that the frame graph takes per sample (`delta_p`, in `channel_shift_layout` order). [P] float32"""
    tuned = dict(generator.named_parameters())
    layout = channel_shift_layout(generator.cfg)
    return torch.cat([(tuned[name] - general[name]).detach().float().flatten() for name, _ in layout])


class ChannelParamsError(ValueError):
    """A personal parameter file that does not fit the model in use; the message says what to do."""


@dataclass
class ChannelPersonalization:
    """An avatar's own parameters where its generator shift is per-channel (`personalize --delta-p
    channels`): the personalisation head MLP_dw and the shift dP. The general model serves such an
    avatar, with its dW (cached per frame) and dP as per-sample inputs, beside any other avatar."""

    delta_w: dict[str, torch.Tensor]  # DeltaW's state dict
    delta_p: torch.Tensor  # [P]
    base_model_id: str  # the general model the shift is relative to

    def save(self, path: Path) -> None:
        """fp16 (about 1.4 MB for `rt`); written whole or not at all."""
        state = {
            "kind": KIND,
            "delta_w": {k: v.detach().cpu().half() for k, v in self.delta_w.items()},
            "delta_p": self.delta_p.detach().cpu().half(),
            "base_model_id": self.base_model_id,
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    @classmethod
    def load(cls, path: Path, cfg: ProfileConfig) -> ChannelPersonalization:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError) as err:
            raise ChannelParamsError(f"{path}: not readable as personal parameters ({err})") from err
        if not isinstance(state, dict) or state.get("kind") != KIND:
            raise ChannelParamsError(f"{path}: not a file of personal parameters (written by lipstream personalize)")
        size = channel_shift_size(cfg)
        if tuple(state["delta_p"].shape) != (size,):
            raise ChannelParamsError(
                f"{path}: a shift of {tuple(state['delta_p'].shape)} values, the {cfg.name} profile takes {size}"
            )
        delta_w = {k: v.float() for k, v in state["delta_w"].items()}
        return cls(delta_w=delta_w, delta_p=state["delta_p"].float(), base_model_id=str(state["base_model_id"]))

    def head(self, cfg: ProfileConfig) -> DeltaW:
        module = DeltaW(cfg)
        try:
            module.load_state_dict(self.delta_w)
        except RuntimeError as err:
            raise ChannelParamsError(f"the personal dW head does not fit the {cfg.name} profile: {err}") from err
        return module.eval()
