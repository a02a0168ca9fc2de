"""Size and cost of each profile: parameters, FLOPs per frame and PyTorch CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import ProfileConfig, get_profile
from .discriminator import Discriminator
from .stylesync import FaceFeatures, StyleSync
from .syncnet import SyncNet


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them (a multiply-add is 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def example_inputs(cfg: ProfileConfig, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes: faces in [-1, 1], a U-ish box mask, a mel window in [-4, 4]."""
    gen = torch.Generator().manual_seed(seed)
    size = cfg.face_size
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 2 :, size // 8 : size - size // 8] = 1.0
    return {
        "target": torch.rand(batch, 3, size, size, generator=gen) * 2 - 1,
        "reference": torch.rand(batch, 3, size, size, generator=gen) * 2 - 1,
        "mask": mask,
        "mel": torch.rand(batch, 1, 80, 16, generator=gen) * 8 - 4,
    }


def render_call(model: StyleSync, mel: torch.Tensor, face: FaceFeatures) -> Callable[[], torch.Tensor]:
    return lambda: model.render(mel, face.f_f, face.delta_w, face.maps)


def profile_report(name: str, latency_runs: int = 0, seed: int = 0) -> dict:
    """Parameters per network, GFLOPs of the per-frame path (E_a + mapping + G) and of E_face, and,
    with latency_runs > 0, the median per-frame PyTorch latency at batch 1 on this machine's CPU."""
    cfg = get_profile(name)
    torch.manual_seed(seed)
    # No parameter needs a gradient here; the FLOP counter's module tracker also expects that.
    model = StyleSync(cfg).eval().requires_grad_(False)
    inputs = example_inputs(cfg, seed=seed)
    face = model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
    render = render_call(model, inputs["mel"], face)
    per_frame = count_flops(render)
    report = {
        "profile": cfg.name,
        "face_size": cfg.face_size,
        "output_shape": list(cfg.output_shape),
        "style_layers": cfg.num_layers,
        "params": {
            "face_encoder": count_params(model.face_encoder),
            "audio_encoder": count_params(model.audio_encoder),
            "mapping": count_params(model.mapping),
            "generator": count_params(model.generator),
            "delta_w": count_params(model.delta_w),
            "discriminator": count_params(Discriminator(cfg)),
            "syncnet": count_params(SyncNet()),
        },
        "gflops_per_frame": per_frame / 1e9,
        "face_encoder_gflops_per_template_frame": count_flops(
            lambda: model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        )
        / 1e9,
    }
    params = report["params"]
    params["per_frame_path"] = params["audio_encoder"] + params["mapping"] + params["generator"]
    params["inference_total"] = params["per_frame_path"] + params["face_encoder"] + params["delta_w"]
    if latency_runs > 0:
        report["latency_ms"] = measure_latency_ms(render, latency_runs)
        report["torch_threads"] = torch.get_num_threads()
    return report


def measure_latency_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> dict[str, float]:
    """Median and spread of wall time per call, after warm-up (this machine is shared and noisy)."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median": statistics.median(times), "min": times[0], "max": times[-1], "runs": runs}
