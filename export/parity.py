"""Parity of exported graphs against the PyTorch reference, on real inputs: a prepared avatar's crops
and cached features, and speech turned into mel windows.

Reports max abs errors (fp32 graphs), PSNR of generated regions (fp16 vs fp32), NaN/inf checks, the
largest pre-demodulation activation, and writes a diff image of the worst frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lipstream.avatars.avatar import Avatar
from lipstream.dsp import MelConfig, mel_windows, melspectrogram
from lipstream.models.layers import StyleInputConv
from lipstream.models.stylesync import StyleSync

from .graphs import map_names


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two image batches in [-1, 1] (clipped), as 8-bit frames would show them."""
    a8, b8 = (np.clip((x + 1) * 127.5, 0, 255) for x in (a, b))
    mse = float(((a8 - b8) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def speech_windows(samples: np.ndarray, count: int) -> np.ndarray:
    """`count` mel windows from the loudest stretch of the speech. [count, 1, 80, 16] float32"""
    mel = melspectrogram(samples)
    frames = len(samples) // MelConfig().samples_per_frame
    windows = mel_windows(mel, 0, frames)
    energy = windows.mean(axis=(1, 2))
    start = int(np.argmax(np.convolve(energy, np.ones(count), mode="valid"))) if frames >= count else 0
    return windows[start : start + count][:, None]


def frame_feed(avatar: Avatar, windows: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of the frame graph: one speech window per avatar frame (cycled)."""
    count = len(windows)
    index = np.arange(count) % avatar.frame_count
    feed = {"mel": windows.astype(np.float32)}
    feed["f_f"] = np.asarray(avatar.array("features/f_f.npy")[index], np.float32)
    feed["delta_w"] = np.asarray(avatar.array("features/delta_w.npy")[index], np.float32)
    # Style smoothing exercised too: each frame blends in the styles of the one before it.
    feed["ws_prev"] = np.random.default_rng(0).standard_normal(feed["delta_w"].shape).astype(np.float32)
    feed["smoothing"] = np.full((count, 1), 0.3, np.float32)
    feed["motion_gain"] = np.full((count, 1), 1.3, np.float32)  # and a mouth that moves more
    # And a per-channel shift (a personalised avatar's), different for every sample of the batch.
    shift = avatar.channel_shift()
    feed["delta_p"] = shift + 0.05 * np.random.default_rng(1).standard_normal((count, len(shift)), np.float32)
    for name, maps in zip(map_names_for(avatar), avatar.feature_maps(), strict=True):
        feed[name] = np.asarray(maps[index], np.float32)
    return feed


def map_names_for(avatar: Avatar) -> list[str]:
    return [f"maps_{layer:02d}" for layer in range(avatar.manifest.style_layers)]


def face_feed(avatar: Avatar, count: int) -> dict[str, np.ndarray]:
    index = np.arange(count) % avatar.frame_count
    crops = np.asarray(avatar.array("crops.npy")[index]).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    reference = np.asarray(avatar.array("crops.npy")[avatar.manifest.reference_frame], np.float32)
    reference = np.repeat((reference.transpose(2, 0, 1) / 127.5 - 1)[None], count, axis=0)
    masks = np.asarray(avatar.array("masks.npy")[index], np.float32)[:, None]
    return {"target": crops, "reference": reference, "mask": masks}


def pre_demod_peak(model: StyleSync, feed: dict[str, np.ndarray]) -> float:
    """Largest |activation| entering any demodulation (output of a modulated conv's convolution)."""
    peaks: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: peaks.append(float(out.abs().max())))
        for m in model.modules()
        if isinstance(m, StyleInputConv)
    ]
    try:
        with torch.inference_mode():
            t = {k: torch.from_numpy(v) for k, v in feed.items()}
            model.render(t["mel"], t["f_f"], t["delta_w"], [t[n] for n in map_names(model.cfg)], t["delta_p"])
    finally:
        for hook in hooks:
            hook.remove()
    return max(peaks)


def write_diff(path: Path, reference: np.ndarray, other: np.ndarray, gain: float) -> None:
    """Side by side: reference, other, |difference| x gain, of the worst sample. Arrays [B, 3, h, w]."""
    worst = int(np.abs(reference - other).reshape(len(reference), -1).max(axis=1).argmax())
    tiles = [np.clip((x[worst].transpose(1, 2, 0) + 1) * 127.5, 0, 255) for x in (reference, other)]
    tiles.append(np.clip(np.abs(reference[worst] - other[worst]).transpose(1, 2, 0) * 127.5 * gain, 0, 255))
    image = np.concatenate(tiles, axis=1).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def max_abs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def run_parity(
    folder: Path, settings: dict, model: StyleSync, avatar: Avatar, speech: np.ndarray, count: int = 8
) -> dict:
    """Every graph of an export folder against PyTorch; writes parity_<graph>.png diff images there."""
    from lipstream.engines.onnxruntime_engine import OnnxRuntimeEngine
    from lipstream.engines.torch_engine import TorchEngine

    model_id = settings["model_id"]
    report: dict = {"frames": count, "avatar": avatar.name, "avatar_model_id": avatar.manifest.model_id}
    feeds = {"frame": frame_feed(avatar, speech_windows(speech, count)), "face_encoder": face_feed(avatar, count)}
    for graph, feed in feeds.items():
        reference = TorchEngine(model, model_id, graph, device="cpu").run(feed)
        fp32 = OnnxRuntimeEngine(folder / settings["graphs"][graph]["file"], graph, model_id).run(feed)
        entry = {"fp32_max_abs_error": max_abs(reference, fp32)}
        if graph == "frame":
            write_diff(folder / "parity_frame.png", reference["region"], fp32["region"], gain=1e4)
            entry["pre_demodulation_peak"] = pre_demod_peak(model, feed)
        if settings["graphs"][graph].get("fp16_file"):
            fp16 = OnnxRuntimeEngine(folder / settings["graphs"][graph]["fp16_file"], graph, model_id).run(feed)
            entry["fp16_finite"] = bool(all(np.isfinite(v).all() for v in fp16.values()))
            entry["fp16_max_abs_error"] = max_abs(fp32, fp16)
            if graph == "frame":
                entry["fp16_psnr_db"] = psnr(fp32["region"], fp16["region"])
                write_diff(folder / "parity_frame_fp16.png", fp32["region"], fp16["region"], gain=20)
        report[graph] = entry
    return report
