"""The region upsampler of the hd path (models/upsampler.py) to ONNX, into a reusable folder.

Two graphs: `upsampler_reference` (the avatar's reference face at 2x -> its features, run once when an
avatar is loaded) and `upsampler_region` (generated regions and those features -> the regions at 2x,
run per frame). The folder is keyed by the upsampler's checksum, like the StyleSync exports.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lipstream import __version__
from lipstream.models.upsampler import SCALE, RegionUpsampler, load_upsampler
from lipstream.models.weights import default_upsampler, state_checksum
from lipstream.paths import cache_dir

from .onnx_export import (
    MAX_BATCH,
    OPSET,
    ExportError,
    _require_export_tools,
    export_module,
    load_settings,
    publish,
)

REGION = (64, 128)  # rows, columns of the rt generator's region


class _Region(nn.Module):
    def __init__(self, net: RegionUpsampler) -> None:
        super().__init__()
        self.net = net

    def forward(self, region: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
        return self.net(region, reference_features)


class _Reference(nn.Module):
    def __init__(self, net: RegionUpsampler) -> None:
        super().__init__()
        self.net = net

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        return self.net.encode_reference(reference)


@dataclass
class UpsamplerExport:
    folder: Path
    upsampler_id: str
    reused: bool

    def graph_path(self, graph: str) -> Path:
        return self.folder / f"{graph}.onnx"


def upsampler_id(net: RegionUpsampler) -> str:
    return f"upsampler-{state_checksum(net)[:16]}"


def export_upsampler_onnx(weights: str | Path | None = None, force: bool = False) -> UpsamplerExport:
    """Exports both graphs of the upsampler in `weights` (default: the shipped one)."""
    path = Path(weights) if weights is not None else default_upsampler()
    if path is None or not path.is_file():
        raise ExportError(f"no upsampler weights at {path}; train them with `lipstream train upsampler`")
    _require_export_tools()
    net = load_upsampler(path)
    uid = upsampler_id(net)
    folder = cache_dir() / "exports" / uid
    key = {"upsampler_id": uid, "opset": OPSET, "lipstream": __version__, "torch": torch.__version__}
    existing = None if force else load_settings(folder)
    if existing is not None and existing.get("key") == key:
        return UpsamplerExport(folder, uid, reused=True)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rows, cols = REGION
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        features = torch.zeros(2, net.width, rows, cols)
        export_module(
            _Region(net),
            (torch.zeros(2, 3, rows, cols), features),
            partial / "upsampler_region.onnx",
            ["region", "reference_features"],
            ["region_hd"],
            ({0: batch}, {0: batch}),
        )
        export_module(
            _Reference(net),
            (torch.zeros(2, 3, rows * SCALE, cols * SCALE),),
            partial / "upsampler_reference.onnx",
            ["reference"],
            ["reference_features"],
            ({0: batch},),
        )
        settings = {
            "key": key,
            "upsampler_id": uid,
            "weights": str(path),
            "config": net.config(),
        }
        publish(partial, folder, settings)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return UpsamplerExport(folder, uid, reused=False)
