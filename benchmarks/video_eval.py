"""`lipstream evaluate --video CLIP [--template VIDEO | --avatar NAME]`: score the pipeline on any video.

The clip (or the template, when one is given) is prepared as an avatar, or a prepared avatar is taken
as it is (`--avatar`: a personalised one runs on its own model); the clip's own audio drives
`lipstream render`'s pipeline (session, scheduler, engine, compositor); the frames that come out are
scored against the clip's real frames. Three systems:
- `model`: what the server shows;
- `static`: the avatar's reference mouth pasted onto the template frames (no lip motion);
- `ground-truth`: the clip's real frames.

Measures, per system:
- lower-face PSNR and SSIM, and LMD (lip landmarks, pixels), on the aligned 128-px crop, as
  `lipstream evaluate` does on the training cache;
- mouth sharpness: variance of the Laplacian of luma in the lips box at the frame's own resolution,
  as a ratio to the real frames' (a blurred mouth scores well below 1);
- opening amplitude: standard deviation of the inner-lip gap (mediapipe on a 256-px crop), as a ratio
  to the real mouth's, and the opening's correlation with the real mouth's opening;
- lip-audio correlation and temporal jerk (`training.evaluate`);
- for `model`, the seam: gradient energy in the band where the generated region fades into the
  frame, against the same band of the template frame it was pasted onto (1: no visible edge).
Writes evaluation.json and contact_sheet.png (aligned crops, and the lips box at full resolution).

Without --template or --avatar the clip is its own template, and rendered frame k is shown on its real
frame k; compositing that keeps the template where the audio changes nothing (`--keep-template`,
realtime.compositor.rest_keep) would then show the truth itself, so it is off for such a run, and the
report says so. Score it with a template from elsewhere (another part of the video, `--template`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np

from lipstream.avatars import Avatar
from lipstream.avatars.align import invert, paste_back, warp_to_crop
from lipstream.avatars.av_sync import best_lag
from lipstream.avatars.avatar import read_frame
from lipstream.avatars.landmarks import LIP_POINTS
from lipstream.avatars.masks import ushape_mask
from lipstream.avatars.prepare import prepare_avatar, track_face
from lipstream.avatars.source import SourceInfo, iter_frames, probe, read_audio
from lipstream.dsp import FPS, MelConfig, melspectrogram, num_video_frames
from lipstream.dsp.voice import VoiceWarp
from lipstream.realtime.render import rendered_frames
from lipstream.realtime.runtime import build_runtime
from lipstream.realtime.settings import MOTION_GAIN, voice_reference
from lipstream.training.config import VideoEvalOptions
from lipstream.training.evaluate import MAX_LAG, MouthLandmarks, lip_audio_r, psnr_ssim_lmd, temporal_jerk

from .motion import lips_box

SYSTEMS = ("model", "static", "ground-truth")
CROP = 128  # the crop the pixel measures use (LMD "at 128")
GAP_CROP = 256  # the crop mediapipe measures the inner-lip gap on
SEAM_BAND = (0.1, 0.9)  # paste weights that count as the seam band
OWN_TEMPLATE = "the clip is its own template, so keeping the template would show its real frames; give --template"

logger = logging.getLogger(__name__)


def sharpness(frame: np.ndarray, box: tuple[slice, slice]) -> float:
    """Variance of the Laplacian of luma in a box of an RGB frame [H, W, 3]."""
    grey = cv2.cvtColor(np.ascontiguousarray(frame[box]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def seam_energy(frame: np.ndarray, transform: np.ndarray, weight: np.ndarray) -> float:
    """Mean squared luma gradient of `frame` where the crop's paste weight [S, S], taken back into the
    frame through `transform` (frame -> crop), lies within SEAM_BAND."""
    height, width = frame.shape[:2]
    back = cv2.warpAffine(weight.astype(np.float32), invert(transform), (width, height), flags=cv2.INTER_LINEAR)
    band = (back > SEAM_BAND[0]) & (back < SEAM_BAND[1])
    if not band.any():
        return 0.0
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return float((gx**2 + gy**2)[band].mean())


def scaled(transform: np.ndarray, size: int) -> np.ndarray:
    """A frame -> crop transform [2, 3] of the CROP-px canonical crop, for a crop of `size` px."""
    return transform * (size / CROP)


def inner_gap(points: np.ndarray | None) -> float:
    """Inner-lip gap from LIP_POINTS landmarks [40, 2] (NaN without a face)."""
    if points is None:
        return float("nan")
    return float(np.linalg.norm(points[LIP_POINTS.index(13)] - points[LIP_POINTS.index(14)]))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 3 or a[keep].std() == 0 or b[keep].std() == 0:
        return None
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def lagged_pearson(a: np.ndarray, b: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int] | None:
    """(Pearson's r, lag in frames) at the lag within +-max_lag where r is highest; a positive lag
    means `a` moves that many frames before `b`."""
    return best_lag(a, b, max_lag, min_frames=3)


class Measured:
    """Per-frame measurements of one system: aligned crops, lip gaps, sharpness."""

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []
        self.gaps: list[float] = []
        self.sharpness: list[float] = []
        self.lips: list[np.ndarray] = []  # the lips box at the frame's own resolution, for the sheet

    def add(self, frame: np.ndarray, transform: np.ndarray, landmarks: np.ndarray, mouths: MouthLandmarks) -> None:
        self.crops.append(warp_to_crop(frame, scaled(transform, CROP), CROP))
        self.gaps.append(inner_gap(mouths(warp_to_crop(frame, scaled(transform, GAP_CROP), GAP_CROP))))
        box = lips_box(landmarks)
        self.sharpness.append(sharpness(frame, box))
        self.lips.append(np.ascontiguousarray(frame[box]))


def _render(avatar_path: Path, samples: np.ndarray, o: VideoEvalOptions, keep: bool) -> tuple[list, bool]:
    """The rendered frames, and whether they took the hd path (the avatar asks, and it could run)."""
    runtime = build_runtime(str(avatar_path), engine=o.engine, weights=o.weights, keep_template=keep)
    if o.motion_gain is not None:
        runtime.motion_gain = o.motion_gain
    runtime.voice_warp = o.voice_warp
    runtime.voice_norm = voice_reference(o.voice_norm)

    async def collect() -> list:
        return [frame async for frame in rendered_frames(runtime, samples)]

    return asyncio.run(collect()), runtime.assets.hd_active


def evaluate_video(clip: str | Path, out: str | Path, options: VideoEvalOptions | None = None) -> dict:
    """Scores the pipeline on `clip` (see the module's docstring); returns the report it writes."""
    o = options or VideoEvalOptions()
    template, weights = o.template, o.weights
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = probe(clip)
    if info.kind != "video" or not info.has_audio:
        raise ValueError(f"{clip}: evaluate --video needs a video with an audio track (it drives the render)")
    max_frames = round(o.max_seconds * FPS)
    # Scored on its own frames, the clip must not show them: keeping the template would show the truth.
    keep = o.keep_template and (template is not None or o.avatar is not None)
    if keep != o.keep_template:
        logger.info("%s: --keep-template is off: %s", clip, OWN_TEMPLATE)
    mel_cfg = MelConfig()
    with tempfile.TemporaryDirectory(prefix="lipstream-eval-") as scratch:
        if o.avatar is not None:
            from lipstream.realtime.runtime import avatar_folder

            avatar_path = avatar_folder(o.avatar)
            if avatar_path is None:
                raise ValueError("evaluate --avatar needs a prepared avatar from a video, not the embedded photo")
        else:
            avatar_path = prepare_avatar(
                template or clip,
                "evaluated",
                root=scratch,
                max_seconds=o.template_seconds if template else o.max_seconds,
                weights=weights,
                show_progress=o.show_progress,
                reference_percentile=o.reference_percentile,
                idle_loop="all",  # rendered frame k must show template frame k
                hd=o.hd,
            ).path
        avatar = Avatar.load(avatar_path)
        if template is None and o.avatar is None:
            truth_landmarks = np.asarray(avatar.array("landmarks.npy"))
            truth_transforms = np.asarray(avatar.array("transforms.npy"))
        else:
            from lipstream.avatars.align import frame_to_crop, smooth_transforms

            truth_landmarks, _ = track_face(info, max_frames, o.show_progress)
            truth_transforms = smooth_transforms(frame_to_crop(truth_landmarks, CROP), 2.0)
        count = len(truth_landmarks)
        samples = read_audio(info, mel_cfg.sample_rate, count * mel_cfg.samples_per_frame)
        rendered, hd_used = _render(avatar_path, samples, o, keep)
        count = min(count, len(rendered), num_video_frames(len(samples)))
        report = _score(avatar, info, rendered[:count], truth_landmarks, truth_transforms, samples, out)
    report |= {"clip": str(Path(clip).resolve()), "template": str(Path(template).resolve()) if template else None}
    report["avatar"] = {"name": avatar.name, "model_id": avatar.manifest.model_id} if o.avatar else None
    report["weights"] = weights or "profile default"
    report["motion_gain"] = MOTION_GAIN if o.motion_gain is None else o.motion_gain
    voice = VoiceWarp(mel_cfg, fixed=o.voice_warp)
    voice.observe(samples)  # what the render's session heard, whole: its warp at the end
    report["keep_template"] = keep
    if keep != o.keep_template:
        report["keep_template_off_because"] = OWN_TEMPLATE
    report["voice_warp"] = {"setting": "auto" if o.voice_warp is None else o.voice_warp, "alpha": voice.alpha}
    report["voice_norm"] = o.voice_norm
    report["hd"] = (avatar.manifest.extra.get("hd") or {}) | {"used": hd_used}
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_videos(clips: list[str | Path], out: str | Path, options: VideoEvalOptions | None = None) -> dict:
    """evaluate_video for each clip (into out/<clip name>/) and the mean of every measure over the
    clips, per system, weighted equally per clip (out/summary.json)."""
    out = Path(out)
    reports = {}
    for clip in clips:
        folder = out / Path(clip).stem if len(clips) > 1 else out
        reports[Path(clip).stem] = evaluate_video(clip, folder, options)
    mean: dict = {}
    for system in SYSTEMS:
        values: dict[str, list[float]] = {}
        for report in reports.values():
            for key, value in report["systems"][system].items():
                if isinstance(value, float | int) and not isinstance(value, bool):
                    values.setdefault(key, []).append(float(value))
        mean[system] = {key: float(np.mean(v)) for key, v in values.items()}
    seams = [r["seam"]["ratio"] for r in reports.values() if "seam" in r]
    mean["seam_ratio"] = float(np.mean(seams)) if seams else None
    weights = options.weights if options else None
    summary = {"clips": list(reports), "weights": weights or "profile default", "mean": mean, "per_clip": reports}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _score(
    avatar: Avatar,
    info: SourceInfo,
    rendered: list,
    truth_landmarks: np.ndarray,
    truth_transforms: np.ndarray,
    samples: np.ndarray,
    out: Path,
) -> dict:
    count = len(rendered)
    loop = np.asarray(avatar.array("idle_loop.npy"))
    transforms = np.asarray(avatar.array("transforms.npy"))
    landmarks = np.asarray(avatar.array("landmarks.npy"))
    crops = avatar.array("crops.npy")
    paste_masks = avatar.array("paste_masks.npy")
    reference = np.asarray(crops[avatar.manifest.reference_frame]).astype(np.float32)
    weight_static = cv2.GaussianBlur(ushape_mask(CROP), (0, 0), 0.02 * CROP)[..., None]
    mouths, gap_mouths = MouthLandmarks(), MouthLandmarks()
    systems = {name: Measured() for name in SYSTEMS}
    seams: list[tuple[float, float]] = []
    for k, truth in enumerate(iter_frames(info, FPS, count)):
        shown = int(loop[k % len(loop)])
        template = read_frame(avatar.path, shown)
        crop = np.asarray(crops[shown]).astype(np.float32)
        canvas = crop * (1 - weight_static) + reference * weight_static
        paste = paste_masks[shown].astype(np.float32) / 255.0
        static = paste_back(template, canvas, transforms[shown], paste, crop)
        frame = rendered[k]
        systems["model"].add(frame.image, transforms[shown], landmarks[shown], gap_mouths)
        systems["static"].add(static, transforms[shown], landmarks[shown], gap_mouths)
        systems["ground-truth"].add(truth, truth_transforms[k], truth_landmarks[k], gap_mouths)
        if frame.kind != "idle":
            seams.append([seam_energy(image, transforms[shown], paste) for image in (frame.image, template)])
    truth = systems["ground-truth"]
    truth_crops = np.stack(truth.crops)
    truth_gaps = np.array(truth.gaps)
    mel = melspectrogram(samples, MelConfig())
    report: dict = {"frames": count, "face_width_px": _face_width(truth_landmarks), "systems": {}}
    for name, measured in systems.items():
        crops_s = np.stack(measured.crops)
        gaps = np.array(measured.gaps)
        entry = psnr_ssim_lmd(crops_s, truth_crops, CROP // 2, mouths)
        if not np.isfinite(entry["psnr_db"]):
            entry["psnr_db"] = None  # identical to the truth; JSON has no infinity
        entry["temporal_jerk"] = temporal_jerk(crops_s, CROP // 2)
        entry["sharpness_ratio"] = float(np.mean(measured.sharpness) / max(np.mean(truth.sharpness), 1e-9))
        real_std = float(np.nanstd(truth_gaps))
        entry["opening_amplitude_ratio"] = float(np.nanstd(gaps) / real_std) if real_std > 0 else None
        entry["opening_correlation"] = pearson(gaps, truth_gaps)
        # The same at the best lag: a mouth right in shape but early or late by a frame shows here.
        lagged = lagged_pearson(gaps, truth_gaps)
        entry["opening_correlation_best_lag"], entry["opening_lag_frames"] = lagged if lagged else (None, None)
        best = lip_audio_r(gaps, mel)
        entry["lip_audio_r"], entry["lip_audio_lag_frames"] = best if best else (None, None)
        report["systems"][name] = entry
    if seams:
        generated, real = np.array(seams).mean(axis=0)
        ratio = generated / max(real, 1e-9)
        report["seam"] = {"frames": len(seams), "model": generated, "template": real, "ratio": ratio}
    _sheet(out / "contact_sheet.png", systems, count)
    return report


def _face_width(landmarks: np.ndarray) -> float:
    """Median cheek-to-cheek width (landmarks 234 and 454), source pixels."""
    return float(np.median(np.linalg.norm(landmarks[:, 454] - landmarks[:, 234], axis=-1)))


def _sheet(path: Path, systems: dict[str, Measured], count: int) -> None:
    """Rows: each system's aligned crops at six moments (enlarged 2x), then each system's lips box at
    the frame's own resolution (enlarged 2x, nearest neighbour: blur is the system's, not the sheet's)."""
    picks = np.linspace(0, count - 1, 6).astype(int)
    rows = []
    for name, measured in systems.items():
        row = np.concatenate([cv2.resize(measured.crops[k], None, fx=2, fy=2) for k in picks], axis=1)
        cv2.putText(row, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    width = rows[0].shape[1] // len(picks)
    for name, measured in systems.items():
        cells = []
        for k in picks:
            lips = measured.lips[k]
            scale = min(width / lips.shape[1], 2.0)
            cell = np.zeros((round(width * 0.6), width, 3), np.uint8)
            big = cv2.resize(lips, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)[: cell.shape[0]]
            cell[: big.shape[0], : big.shape[1]] = big
            cells.append(cell)
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, f"{name} lips", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
