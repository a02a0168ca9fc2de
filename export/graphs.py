"""The two graphs that leave PyTorch, with their tensor names and shapes.

- frame: mel window + cached face features + the previous frame's styles + a motion gain + the
  avatar's per-channel generator shift -> generated region and this frame's styles (E_a + mapping +
  style smoothing + G), run per video frame by the real-time server. Smoothing 0 renders without
  smoothing; gain 1 renders as trained; a zero shift is the general model, and personalised avatars
  (`personalize --delta-p channels`) share one batch.
- face_encoder: masked target + reference -> the face features an avatar caches (E_face + dW head).
"""

from __future__ import annotations

import torch
from torch import nn

from lipstream.dsp import MelConfig
from lipstream.models.config import ProfileConfig
from lipstream.models.generator import channel_shift_size
from lipstream.models.stylesync import StyleSync

GRAPHS = ("frame", "face_encoder")
# Raised whenever a graph's inputs or outputs change, so that older export folders are rebuilt.
INTERFACE_VERSION = 4  # 4: motion_gain


def map_names(cfg: ProfileConfig) -> list[str]:
    return [f"maps_{layer:02d}" for layer in range(cfg.num_layers)]


class FrameGraph(nn.Module):
    def __init__(self, model: StyleSync) -> None:
        super().__init__()
        self.model = model
        mel = MelConfig()
        silence = torch.full((1, 1, mel.n_mels, mel.window_frames), -mel.max_abs_value)  # every mel at its floor
        with torch.no_grad():
            self.register_buffer("f_a_rest", model.audio_encoder(silence), persistent=False)  # [1, audio_dim]

    def forward(
        self,
        mel: torch.Tensor,
        f_f: torch.Tensor,
        delta_w: torch.Tensor,
        ws_prev: torch.Tensor,
        smoothing: torch.Tensor,
        motion_gain: torch.Tensor,
        delta_p: torch.Tensor,
        maps: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # motion_gain [B, 1]: how far the audio moves each sample's styles from those of silence (1: as
        # trained; Mapping.amplified).
        motion = (self.f_a_rest, motion_gain)
        return self.model.render_smoothed(mel, f_f, delta_w, list(maps), ws_prev, smoothing, delta_p, motion)


class FaceEncoderGraph(nn.Module):
    def __init__(self, model: StyleSync) -> None:
        super().__init__()
        self.model = model

    def forward(self, target: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        face = self.model.encode_face(target, reference, mask)
        return (face.f_f, face.delta_w, *face.maps)


def input_names(graph: str, cfg: ProfileConfig) -> list[str]:
    if graph == "frame":
        return ["mel", "f_f", "delta_w", "ws_prev", "smoothing", "motion_gain", "delta_p", *map_names(cfg)]
    return ["target", "reference", "mask"]


def output_names(graph: str, cfg: ProfileConfig) -> list[str]:
    return ["region", "ws"] if graph == "frame" else ["f_f", "delta_w", *map_names(cfg)]


def input_shapes(graph: str, cfg: ProfileConfig) -> dict[str, list[int]]:
    """Shapes without the batch axis, by input name."""
    size = cfg.face_size
    if graph == "face_encoder":
        return {"target": [3, size, size], "reference": [3, size, size], "mask": [1, size, size]}
    styles = [cfg.num_layers, cfg.w_dim]
    shapes = {"mel": [1, 80, 16], "f_f": [cfg.face_dim], "delta_w": styles, "ws_prev": styles, "smoothing": [1]}
    shapes["motion_gain"] = [1]
    shapes["delta_p"] = [channel_shift_size(cfg)]
    return shapes | {name: list(shape) for name, shape in zip(map_names(cfg), cfg.face_map_shapes(), strict=True)}


def output_shapes(graph: str, cfg: ProfileConfig) -> dict[str, list[int]]:
    if graph == "frame":
        return {"region": [3, *cfg.output_shape], "ws": [cfg.num_layers, cfg.w_dim]}
    shapes = {"f_f": [cfg.face_dim], "delta_w": [cfg.num_layers, cfg.w_dim]}
    return shapes | {name: list(shape) for name, shape in zip(map_names(cfg), cfg.face_map_shapes(), strict=True)}


def graph_module(graph: str, model: StyleSync) -> nn.Module:
    return FrameGraph(model) if graph == "frame" else FaceEncoderGraph(model)


def example_args(graph: str, model: StyleSync, batch: int = 2) -> tuple:
    """Positional arguments for export; batch 2 so that the exporter does not freeze the batch axis."""
    from lipstream.models.report import example_inputs

    inputs = example_inputs(model.cfg, batch=batch)
    if graph == "face_encoder":
        return (inputs["target"], inputs["reference"], inputs["mask"])
    with torch.no_grad():
        face = model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
    ws_prev = torch.randn_like(face.delta_w)
    smoothing = torch.full((batch, 1), 0.3)
    motion_gain = torch.full((batch, 1), 1.3)
    delta_p = 0.05 * torch.randn(batch, channel_shift_size(model.cfg))
    return (inputs["mel"], face.f_f, face.delta_w, ws_prev, smoothing, motion_gain, delta_p, tuple(face.maps))
