"""`lipstream evaluate`: render held-out clips' lower faces from their own audio and score them.

For each clip the reference frame comes from a different clip of the same person; a person with a
single clip (the held-out `talking` identities) has its second half rendered, with the reference
from its first half. Scores, against
the ground-truth aligned crops:
- PSNR and SSIM of the generated region (the crop's lower rows);
- LMD: mean distance of the mouth landmarks (mediapipe, on the 128-px crop), pixels;
- sync: offset accuracy and confidence from an evaluation expert, for the rendering and for ground
  truth side by side (when an expert is given);
- lip-audio correlation: Pearson's r between the mouth's opening (inner lip landmarks, every frame)
  and the audio's loudness (mean log-mel of the frame), at the best lag within +-3 frames, and that
  lag. It needs no expert, so it also works for faces the expert never saw; a still mouth scores
  about 0.
Systems: a model (`rt` weights, or the seeded init), and two baselines: `static` (the reference
frame's mouth pasted in: no lip motion) and `ground-truth`. Writes JSON, a side-by-side MP4
(ground truth | rendering) of the first clip, and a PNG contact sheet.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity

from lipstream.avatars.av_sync import best_lag, frame_loudness
from lipstream.avatars.landmarks import LIP_POINTS
from lipstream.avatars.masks import ushape_mask
from lipstream.dsp import MelConfig, mel_windows
from lipstream.models.syncnet import SyncNet
from lipstream.models.weights import load_stylesync

from .config import EVAL_IDENTITY, EVAL_MAX_CLIPS, EVAL_SPLIT
from .dataset import HELD_OUT_IDENTITIES
from .loaders import Clip, load_clips, to_unit
from .syncnet_train import validate

SYSTEMS = ("model", "static", "ground-truth")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


class MouthLandmarks:
    def __init__(self) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True)

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        """Lip landmarks [40, 2] in crop pixels, None when no face is found."""
        found = self._mesh.process(np.ascontiguousarray(crop)).multi_face_landmarks
        if not found:
            return None
        size = crop.shape[0]
        return np.array([(found[0].landmark[i].x * size, found[0].landmark[i].y * size) for i in LIP_POINTS])


def render_clip(
    system: str, clip: Clip, reference: np.ndarray, model: torch.nn.Module | None, smoothing: float = 0.0
) -> np.ndarray:
    """The clip's crops with the lower face rendered by `system`. [N, S, S, 3] uint8
    smoothing: the model's styles averaged over frames as the real-time server does (StyleSmoothing)."""
    crops = np.asarray(clip.crops)
    size = crops.shape[1]
    if system == "ground-truth":
        return crops.copy()
    mask = ushape_mask(size)
    if system == "static":
        weight = cv2.GaussianBlur(mask, (0, 0), 0.02 * size)[..., None]
        return np.clip(crops * (1 - weight) + reference[None] * weight + 0.5, 0, 255).astype(np.uint8)
    rows = model.cfg.region_rows
    out = crops.copy()
    windows = mel_windows(clip.mel, 0, clip.frames, MelConfig())
    previous = None
    with torch.inference_mode():
        for start in range(0, clip.frames, 16):
            stop = min(start + 16, clip.frames)
            count = stop - start
            face = model.encode_face(
                to_unit(crops[start:stop]),
                to_unit(reference[None]).expand(count, -1, -1, -1),
                torch.from_numpy(mask)[None, None].expand(count, -1, -1, -1),
            )
            ws = model.styles(torch.from_numpy(windows[start:stop])[:, None], face.f_f, face.delta_w)
            if smoothing > 0:
                for i in range(count):
                    if previous is not None:
                        ws[i] = model.smoothing(ws[i : i + 1], previous, torch.full((1, 1), smoothing))[0]
                    previous = ws[i : i + 1]
            region = model.generator(ws, face.maps)
            out[start:stop, size - rows :] = (
                np.clip((region.clamp(-1, 1) + 1) * 127.5 + 0.5, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            )
    return out


def temporal_jerk(frames: np.ndarray, rows: int) -> float:
    """Mean |second difference over time| of the lower face, grey levels: flicker and jitter."""
    lower = frames[:, -rows:].astype(np.float32)
    return float(np.abs(lower[2:] - 2 * lower[1:-1] + lower[:-2]).mean()) if len(lower) > 2 else 0.0


MAX_LAG = 3  # frames either way that lip-audio correlation searches


def lip_audio(rendered: np.ndarray, mel: np.ndarray, mouths: MouthLandmarks) -> tuple[float, int] | None:
    """lip_audio_r of the inner-lip opening that mediapipe finds in each rendered crop."""
    upper, lower = LIP_POINTS.index(13), LIP_POINTS.index(14)  # the middle of the inner lips
    opening = np.full(len(rendered), np.nan)
    for i, crop in enumerate(rendered):
        points = mouths(crop)
        if points is not None:
            opening[i] = np.linalg.norm(points[upper] - points[lower])
    return lip_audio_r(opening, mel)


def lip_audio_r(opening: np.ndarray, mel: np.ndarray) -> tuple[float, int] | None:
    """(Pearson's r, lag in frames; positive: the sound comes after the mouth) between the opening of
    the mouth per frame ([N], NaN where no face was found) and the loudness of the audio (mean log-mel
    of each frame), at the lag within +-MAX_LAG where r is highest. None for a clip too short or
    without a face in most frames."""
    return best_lag(opening, frame_loudness(mel, len(opening)), MAX_LAG)


def psnr_ssim_lmd(rendered: np.ndarray, truth: np.ndarray, rows: int, mouths: MouthLandmarks) -> dict:
    """Lower-face (last `rows` rows) PSNR and SSIM, and the lip landmarks' mean distance in pixels
    (every 5th frame), of aligned crops [N, S, S, 3] against the true ones."""
    lower_r, lower_t = rendered[:, -rows:], truth[:, -rows:]
    ssim = np.mean(
        [structural_similarity(r, t, channel_axis=2, data_range=255) for r, t in zip(lower_r, lower_t, strict=True)]
    )
    distances = []
    for r, t in zip(rendered[::5], truth[::5], strict=True):  # every 5th frame keeps mediapipe's cost down
        a, b = mouths(r), mouths(t)
        if a is not None and b is not None:
            distances.append(float(np.linalg.norm(a - b, axis=1).mean()))
    return {
        "psnr_db": psnr(lower_r, lower_t),
        "ssim": float(ssim),
        "lmd_px": float(np.mean(distances)) if distances else None,
    }


def score(rendered: np.ndarray, truth: np.ndarray, rows: int, mouths: MouthLandmarks) -> dict:
    return {"temporal_jerk": temporal_jerk(rendered, rows)} | psnr_ssim_lmd(rendered, truth, rows, mouths)


def evaluate(
    cache: Path,
    out: Path,
    systems: tuple[str, ...] = SYSTEMS,
    split: str = EVAL_SPLIT,
    identity: str = EVAL_IDENTITY,
    max_clips: int = EVAL_MAX_CLIPS,
    weights: str | None = None,
    expert: str | None = None,
    tail_seconds: float | None = None,
    smoothing: float = 0.0,
) -> dict:
    identities = set(HELD_OUT_IDENTITIES) if identity == "held-out" else set(identity.split(","))
    pairs = reference_pairs(load_clips(cache, split, identities), tail_seconds)[:max_clips]
    if not pairs:
        raise ValueError(f"no {split} clips of {identity} in {cache}; build the dataset first")
    clips = [clip for clip, _ in pairs]
    out.mkdir(parents=True, exist_ok=True)
    model = load_stylesync("rt", weights)[0] if "model" in systems else None
    net = None
    if expert:
        net = SyncNet()
        net.load_state_dict({k: v.float() for k, v in torch.load(expert, weights_only=True).items()})
    mouths = MouthLandmarks()
    report: dict = {
        "split": split,
        "identity": identity,
        "clips": [c.meta["clip_id"] for c in clips],
        "weights": weights or "profile default",
        "style_smoothing": smoothing,
        "systems": {},
    }
    first_renders = {}
    for system in systems:
        per_clip, renders, correlations = [], [], []
        for clip, reference in pairs:
            rendered = render_clip(system, clip, reference, model, smoothing)
            per_clip.append(score(rendered, np.asarray(clip.crops), 64, mouths))
            renders.append(rendered)
            correlations.append(lip_audio(rendered, clip.mel, mouths))
        entry = {k: float(np.mean([c[k] for c in per_clip if c[k] is not None])) for k in per_clip[0]}
        measured = [c for c in correlations if c is not None]
        entry["lip_audio"] = {
            "clips": len(measured),
            "r": float(np.mean([r for r, _ in measured])) if measured else None,
            "lag_frames": float(np.median([lag for _, lag in measured])) if measured else None,
        }
        if net is not None:
            entry["sync"] = _sync(net, clips, renders)
        report["systems"][system] = entry
        first_renders[system] = renders[0]
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    _side_by_side(out / "side_by_side.mp4", first_renders, clips[0])
    _sheet(out / "contact_sheet.png", first_renders)
    return report


def reference_pairs(clips: list[Clip], tail_seconds: float | None = None) -> list[tuple[Clip, np.ndarray]]:
    """(clip to render, reference frame) for each clip: the reference is the middle frame of the same
    person's next clip; a person's only clip is split, its second half rendered with a reference from
    the first half (the cut falls on a multiple of 5 frames, where mel frames line up exactly).
    `tail_seconds`: every clip is split so that only its last seconds are rendered (what a
    personalised avatar held out of its template)."""
    by_person: dict[str, list[Clip]] = {}
    for clip in clips:
        by_person.setdefault(clip.meta["identity"], []).append(clip)
    pairs = []
    for clip in clips:
        own = by_person[clip.meta["identity"]]
        if len(own) > 1 and tail_seconds is None:
            other = own[(own.index(clip) + 1) % len(own)]
            pairs.append((clip, np.asarray(other.crops[other.frames // 2])))
            continue
        keep = clip.frames // 2 if tail_seconds is None else min(clip.frames - 5, round(tail_seconds * 25))
        cut = (clip.frames - keep + 4) // 5 * 5
        part = "2nd half" if tail_seconds is None else f"last {(clip.frames - cut) / 25:g} s"
        second = Clip(
            clip.path, clip.meta | {"frames": clip.frames - cut, "clip_id": clip.meta["clip_id"] + f"[{part}]"}
        )
        second.__dict__["crops"] = clip.crops[cut:]
        second.__dict__["mel"] = clip.mel[:, cut * 16 // 5 :]
        pairs.append((second, np.asarray(clip.crops[cut // 2])))
    return pairs


def _sync(net: SyncNet, clips: list[Clip], renders: list[np.ndarray]) -> dict:
    """The expert's offset search over rendered clips (ground-truth audio)."""
    swapped = []
    for clip, rendered in zip(clips, renders, strict=True):
        copy = Clip(clip.path, clip.meta)
        copy.__dict__["crops"] = rendered  # takes the place of the cached memory map
        swapped.append(copy)
    return validate(net, swapped, torch.device("cpu"))


def _side_by_side(path: Path, renders: dict[str, np.ndarray], clip: Clip) -> None:
    order = [s for s in ("ground-truth", "model", "static") if s in renders]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "18"})
        size = renders[order[0]].shape[1]
        stream.width, stream.height, stream.pix_fmt = size * len(order), size, "yuv420p"
        for k in range(clip.frames):
            frame = av.VideoFrame.from_ndarray(np.concatenate([renders[s][k] for s in order], axis=1), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _sheet(path: Path, renders: dict[str, np.ndarray]) -> None:
    rows = []
    for system, frames in renders.items():
        picks = frames[np.linspace(0, len(frames) - 1, 6).astype(int)]
        row = np.concatenate(list(picks), axis=1).copy()
        cv2.putText(row, system, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
