"""PyTorch -> ONNX (fp32, and fp16 with the style path kept in fp32), checked, into a reusable folder.

Folder: frame.onnx, face_encoder.onnx, their .fp16.onnx twins when asked, and settings.json (profile,
opset, shapes, model id and checksum, exporter versions, the sha256 of every graph). Exporting again
with the same model and settings reuses the folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import torch

from lipstream import __version__
from lipstream.models.weights import load_stylesync, state_checksum
from lipstream.paths import cache_dir

from .graphs import (
    GRAPHS,
    INTERFACE_VERSION,
    example_args,
    graph_module,
    input_names,
    input_shapes,
    output_names,
    output_shapes,
)

logger = logging.getLogger("lipstream.export")

OPSET = 20
MAX_BATCH = 64
SETTINGS = "settings.json"
# fp16 graphs keep these modules in fp32: the style path of every modulated convolution (a square,
# a sum and a reciprocal square root per sample) and the small mapping and dW MLPs.
FP32_MODULES = (
    "lipstream.models.layers.Modulation",
    "lipstream.models.mapping.Mapping",
    "lipstream.models.personalization.DeltaW",
    "lipstream.models.mapping.StyleSmoothing",
)


class ExportError(RuntimeError):
    """Export tools missing, or a graph that fails its checks."""


@dataclass
class ExportResult:
    folder: Path
    settings: dict
    reused: bool

    def graph_path(self, graph: str, fp16: bool = False) -> Path:
        entry = self.settings["graphs"][graph]
        return self.folder / (entry["fp16_file"] if fp16 else entry["file"])


def _require_export_tools() -> None:
    for module in ("onnx", "onnxscript", "onnxconverter_common"):
        try:
            __import__(module)
        except ImportError as err:
            raise ExportError(
                f"exporting needs the '{module}' package; install the export tools: pip install 'lipstream[export]'"
            ) from err


def _sha256(path: Path) -> str:
    from lipstream.avatars.avatar import sha256_file

    return sha256_file(path)


def default_folder(model_id: str) -> Path:
    return cache_dir() / "exports" / model_id


def _key(profile: str, model_id: str, fp16: bool) -> dict:
    return {
        "profile": profile,
        "model_id": model_id,
        "opset": OPSET,
        "interface": INTERFACE_VERSION,
        "fp16": fp16,
        "max_batch": MAX_BATCH,
        "lipstream": __version__,
        "torch": torch.__version__,
    }


def load_settings(folder: Path) -> dict | None:
    """settings.json of a complete export folder whose graphs match their checksums, else None."""
    try:
        settings = json.loads((folder / SETTINGS).read_text())
        if all(_sha256(folder / name) == digest for name, digest in settings["checksums"].items()):
            return settings
    except (OSError, ValueError, KeyError, TypeError) as err:
        if folder.exists():
            logger.info("export folder %s cannot be reused (%s: %s); exporting again", folder, type(err).__name__, err)
        return None
    logger.info("export folder %s: a graph does not match its checksum; exporting again", folder)
    return None


def export_onnx(
    profile: str = "rt",
    weights: str | Path | None = None,
    out: str | Path | None = None,
    fp16: bool = False,
    force: bool = False,
) -> ExportResult:
    """Exports both graphs of a profile; reuses `out` when it already holds this export."""
    _require_export_tools()
    model, model_id = load_stylesync(profile, weights)
    folder = Path(out) if out is not None else default_folder(model_id)
    key = _key(model.cfg.name, model_id, fp16)
    existing = None if force else load_settings(folder)
    if existing is not None and existing.get("key") == key:
        return ExportResult(folder, existing, reused=True)

    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        graphs = {}
        for graph in GRAPHS:
            path = partial / f"{graph}.onnx"
            _export_graph(graph, model, path)
            entry = {
                "file": path.name,
                "inputs": {n: ["batch", *s] for n, s in input_shapes(graph, model.cfg).items()},
                "outputs": {n: ["batch", *s] for n, s in output_shapes(graph, model.cfg).items()},
            }
            if fp16:
                to_fp16(path, partial / f"{graph}.fp16.onnx")
                entry["fp16_file"] = f"{graph}.fp16.onnx"
            graphs[graph] = entry
        settings = {
            "key": key,
            "profile": model.cfg.name,
            "model_id": model_id,
            "model_checksum": state_checksum(model),
            "opset": OPSET,
            "batch": [1, MAX_BATCH],
            "graphs": graphs,
            "fp16_kept_in_fp32": list(FP32_MODULES) if fp16 else [],
            "versions": {
                p: version(p)
                for p in ("lipstream", "torch", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common")
            },
        }
        publish(partial, folder, settings)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ExportResult(folder, settings, reused=False)


def publish(partial: Path, folder: Path, settings: dict) -> None:
    """Writes settings.json (with the time and every graph's sha256) into a finished export folder and
    puts it in the place of `folder`."""
    settings["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    settings["checksums"] = {p.name: _sha256(p) for p in sorted(partial.glob("*.onnx"))}
    (partial / SETTINGS).write_text(json.dumps(settings, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(folder)


def _export_graph(graph: str, model: torch.nn.Module, path: Path) -> None:
    cfg = model.cfg
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if graph == "frame":
        plain = len(input_names(graph, cfg)) - cfg.num_layers  # the face maps go in as one tuple
        dynamic = (*({0: batch} for _ in range(plain)), tuple({0: batch} for _ in range(cfg.num_layers)))
    else:
        dynamic = ({0: batch}, {0: batch}, {0: batch})
    export_module(
        graph_module(graph, model),
        example_args(graph, model),
        path,
        input_names(graph, cfg),
        output_names(graph, cfg),
        dynamic,
    )


def export_module(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: tuple,
) -> None:
    """One module to one checked ONNX file (dynamo exporter, OPSET, weights inside the file)."""
    import onnx

    # The exporter narrates its steps on stdout and warns about optional packages (torchvision) we do
    # not use; neither helps a user, so both are kept out of the output.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=False,
            dynamo=True,
        )
    exporter_log.setLevel(level)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path.name} fails onnx.checker: {err}") from err


def _keeps_fp32(node: object) -> bool:
    hierarchy = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.class_hierarchy"), "")
    return any(module in hierarchy for module in FP32_MODULES)


def to_fp16(src: Path, dst: Path) -> None:
    """An fp16 copy of an fp32 graph, precision explicit in the graph (for strongly typed TensorRT):
    fp16 weights and activations, fp32 inputs and outputs, FP32_MODULES' nodes in fp32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    keep = [node.name for node in model.graph.node if _keeps_fp32(node)]
    if not keep:
        raise ExportError(
            f"{src.name}: found none of {FP32_MODULES} in the graph's metadata; cannot place fp32 islands"
        )
    converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    onnx.save(converted, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
