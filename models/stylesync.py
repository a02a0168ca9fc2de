"""StyleSync: the networks of one profile, split the way they run.

`encode_face` depends on the template only: an avatar runs it once per template frame and caches its
outputs. `render` is the per-frame path of the real-time server: E_a + mapping + G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .audio_encoder import AudioEncoder
from .config import ProfileConfig, get_profile
from .face_encoder import FaceEncoder
from .generator import Generator
from .mapping import Mapping, StyleSmoothing
from .personalization import DeltaW


@dataclass
class FaceFeatures:
    """What an avatar caches per template frame."""

    maps: list[torch.Tensor]  # L tensors [B, noise_ch, rows_l, width_l], Eq. 1 applied
    f_f: torch.Tensor  # [B, face_dim]
    delta_w: torch.Tensor  # [B, L, w_dim], zeros until personalised


class StyleSync(nn.Module):
    def __init__(self, cfg: ProfileConfig | str = "rt") -> None:
        super().__init__()
        self.cfg = cfg = get_profile(cfg) if isinstance(cfg, str) else cfg
        self.face_encoder = FaceEncoder(cfg)
        self.audio_encoder = AudioEncoder(cfg)
        self.mapping = Mapping(cfg)
        self.generator = Generator(cfg)
        self.delta_w = DeltaW(cfg)
        self.smoothing = StyleSmoothing()

    def encode_face(self, target: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> FaceFeatures:
        # target, reference: [B, 3, S, S] aligned faces in [-1, 1]; mask: [B, 1, S, S], 1 = erased.
        maps, f_f = self.face_encoder(target, reference, mask)
        return FaceFeatures(maps=maps, f_f=f_f, delta_w=self.delta_w(f_f))

    def render(
        self,
        mel: torch.Tensor,
        f_f: torch.Tensor,
        delta_w: torch.Tensor,
        maps: list[torch.Tensor],
        delta_p: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # mel: [B, 1, 80, 16] window of each frame; f_f, delta_w, maps: cached FaceFeatures fields;
        # delta_p: [B, channel_shift_size] each sample's per-channel generator shift, or None.
        # Returns the generated region [B, 3, region_rows, face_size] in [-1, 1] (unclamped).
        return self.generator(self.styles(mel, f_f, delta_w), maps, delta_p)

    def styles(self, mel: torch.Tensor, f_f: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
        """E_a + mapping: the styles W+ of each frame. [B, L, w_dim]"""
        return self.mapping(self.audio_encoder(mel), f_f, delta_w)

    def render_smoothed(
        self,
        mel: torch.Tensor,
        f_f: torch.Tensor,
        delta_w: torch.Tensor,
        maps: list[torch.Tensor],
        ws_prev: torch.Tensor,
        smoothing: torch.Tensor,
        delta_p: torch.Tensor | None = None,
        motion: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`render` with the styles averaged over frames (see StyleSmoothing). ws_prev: the previous
        frame's smoothed styles [B, L, w_dim]; smoothing: [B, 1]; motion: (f_a of silence [1, audio_dim],
        gain [B, 1]) scales how far the audio moves the styles (Mapping.amplified). Returns (region,
        smoothed styles)."""
        if motion is None:
            styles = self.styles(mel, f_f, delta_w)
        else:
            styles = self.mapping.amplified(self.audio_encoder(mel), motion[0], f_f, delta_w, motion[1])
        ws = self.smoothing(styles, ws_prev, smoothing)
        return self.generator(ws, maps, delta_p), ws

    def forward(
        self, mel: torch.Tensor, target: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Training path: both halves in one call. Returns [B, 3, region_rows, face_size]."""
        face = self.encode_face(target, reference, mask)
        return self.render(mel, face.f_f, face.delta_w, face.maps)
