"""`lipstream prepare`: a template video or photo -> a cached, validated avatar folder.

Two streaming passes over the source, so no more than a batch of frames is ever decoded at once:
1. landmarks of the main face in every frame -> smoothed crop transforms, reference frame choice;
2. crops, masks, face-encoder features and JPEG frames, a batch at a time.
Everything is written into a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from lipstream import __version__
from lipstream.dsp import FPS, MelConfig, melspectrogram, to_s16
from lipstream.models.config import get_profile
from lipstream.models.personalization import ChannelParamsError, ChannelPersonalization
from lipstream.models.weights import load_stylesync
from lipstream.paths import avatars_dir, check_name
from lipstream.progress import Progress

from .align import (
    centre_jitter,
    choose_reference,
    eye_distance,
    frame_to_crop,
    mouth_opening,
    smooth_transforms,
    warp_to_crop,
)
from .av_sync import AudioSync, measure_audio_sync, shift_audio
from .avatar import CHANNEL_SHIFT, FORMAT_VERSION, frame_file, read_frame, sha256_file
from .detail import MIN_FRAMES as MIN_BANK_FRAMES
from .detail import write_bank
from .errors import SourceError
from .landmarks import FaceTracker
from .manifest import MANIFEST, Audio, Manifest, Source
from .masks import crop_landmarks, lower_face_mask, paste_mask
from .options import (
    DEFAULT_IDLE_LOOP,
    DEFAULT_MASK,
    HD_MAX_CROP_SCALE,
    HD_MODES,
    HD_SCALE,
    IDLE_LOOPS,
    MASK_KINDS,
    MAX_SECONDS,
    QUIET_SECONDS,
    REFERENCE_PERCENTILE,
    SMOOTHING_SIGMA,
)
from .source import SourceInfo, iter_frames, probe, read_audio

MAX_UPSCALE = 2.0  # a face enlarged more than this into the crop is too small for the profile
BATCH = 16
JPEG_QUALITY = 95


@dataclass
class PrepareResult:
    path: Path
    manifest: Manifest
    seconds: float
    audio_sync: AudioSync | None = None  # None for a photo or a silent video, or when no lag could be judged

    @property
    def frames_per_second(self) -> float:
        return self.manifest.frame_count / self.seconds if self.seconds > 0 else 0.0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float in [-1, 1]."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # a copy: mmaps are read-only


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(data.tobytes())


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = to_s16(samples)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def ping_pong(count: int, first: int = 0) -> np.ndarray:
    """first, first+1, ..., first+n-1, ..., first+1: every step moves one frame, so the loop point is invisible."""
    return (first + np.concatenate([np.arange(count), np.arange(count - 2, 0, -1)])).astype(np.int32)


def quiet_stretch(opening: np.ndarray, frames: int) -> int:
    """The first frame of the `frames`-long stretch where the mouth is most still and most closed (lowest
    mean plus spread of the inner-lip opening): a template video whose person talks would otherwise
    mouth words while the avatar is silent."""
    if len(opening) <= frames:
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(opening, frames)
    return int(np.argmin(windows.mean(axis=1) + windows.std(axis=1)))


def check_face_size(transforms: np.ndarray, landmarks: np.ndarray, profile: str, size: int) -> None:
    scale = np.hypot(transforms[:, 0, 0], transforms[:, 1, 0])  # crop pixels per source pixel
    worst = int(np.argmax(scale))
    if scale[worst] > MAX_UPSCALE:
        eyes = float(eye_distance(landmarks[worst]))
        raise SourceError(
            f"frame {worst}: the face is too small for the {profile} profile: its eyes are {eyes:.0f} px apart, "
            f"and the {size}-px crop needs at least {size / 3.4 / MAX_UPSCALE:.0f} px (it would be enlarged "
            f"{scale[worst]:.1f}x, which blurs it); use a closer or higher-resolution source"
        )


def choose_hd(mode: str, profile: str, transforms: np.ndarray) -> dict:
    """Whether the avatar takes the hd path, how, and why (the manifest's "hd" entry).

    A video template of at least a second lends its own mouths' detail (avatars/detail.py, method
    "detail"); a photo needs the learned region upsampler's weights (models/upsampler.py, "upsampler")."""
    from lipstream.models.weights import default_upsampler

    scale = float(np.median(np.hypot(transforms[:, 0, 0], transforms[:, 1, 0]))) * HD_SCALE
    entry = {"mode": mode, "crop_scale": round(scale, 3)}
    if mode == "off":
        return entry | {"enabled": False, "why": "turned off (--hd off)"}
    method = "detail" if len(transforms) >= MIN_BANK_FRAMES else "upsampler"
    if profile != "rt":
        if mode == "on":
            raise ValueError(f"the hd path needs the rt profile, not {profile}; prepare with --hd auto or off")
        return entry | {"enabled": False, "why": f"no hd path for the {profile} profile"}
    if method == "upsampler" and default_upsampler() is None:
        few = (
            f"the template has {len(transforms)} frames (a photo, or under {MIN_BANK_FRAMES} frames): too few to lend "
            "the mouth their detail, and there are no region upsampler weights here"
        )
        if mode == "on":
            raise ValueError(
                f"{few} (models/weights/upsampler.pt, or the file $LIPSTREAM_UPSAMPLER names; `lipstream train "
                "upsampler` makes them); prepare with --hd auto or off, or from a longer video"
            )
        return entry | {"enabled": False, "why": few}
    if mode == "auto" and scale > HD_MAX_CROP_SCALE:
        why = f"the face is too small: its {HD_SCALE}x crop would enlarge it {scale:.2f}x (at most {HD_MAX_CROP_SCALE})"
        return entry | {"enabled": False, "why": why}
    why = "asked for (--hd on)" if mode == "on" else "the face is large enough"
    return entry | {"enabled": True, "method": method, "why": why}


def track_face(info: SourceInfo, max_frames: int, show: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1. Returns (landmarks [N, 478, 2], detected [N] bool)."""
    progress = Progress("landmarks", max_frames if info.kind == "video" else 1, enabled=show)
    with FaceTracker() as tracker:
        for frame in iter_frames(info, FPS, max_frames):
            tracker.add(frame)
            progress.step()
        track = tracker.finish()
    progress.close()
    return track.landmarks, track.detected


def nth_frame(info: SourceInfo, index: int) -> np.ndarray:
    for i, frame in enumerate(iter_frames(info, FPS, index + 1)):
        if i == index:
            return frame
    raise SourceError(f"{info.path}: frame {index} could not be decoded a second time")


def prepare_avatar(
    source: str | Path,
    name: str,
    profile: str = "rt",
    mask: str = DEFAULT_MASK,
    root: str | Path | None = None,
    max_seconds: float = MAX_SECONDS,
    smoothing: float = SMOOTHING_SIGMA,
    weights: str | Path | None = None,
    show_progress: bool = True,
    reference_percentile: float = REFERENCE_PERCENTILE,
    idle_loop: str = DEFAULT_IDLE_LOOP,
    hd: str = "auto",
    audio_offset_ms: int = 0,
) -> PrepareResult:
    """Prepares SOURCE as avatar NAME under `root` (default: the user's avatar cache).
    reference_percentile: the reference frame's mouth opening, as a percentile of the clip's.
    idle_loop: "quiet" plays the template's stillest QUIET_SECONDS back and forth (whatever the avatar
    shows, speaking or not); "all" plays every frame (evaluation, where frame k must be frame k).
    hd: "auto" turns the hd path (the generated mouth upsampled 2x, models/upsampler.py) on for faces large
    enough to show it, "on" and "off" as said.
    audio_offset_ms: the template's sound is delayed by this much against its picture (advanced when
    negative), for a video whose audio track is shifted; `PrepareResult.audio_sync` says how it looks."""
    if hd not in HD_MODES:
        raise ValueError(f"unknown hd mode {hd!r}; choose one of: {', '.join(HD_MODES)}")
    if idle_loop not in IDLE_LOOPS:
        raise ValueError(f"unknown idle loop {idle_loop!r}; choose one of: {', '.join(IDLE_LOOPS)}")
    if not 0 <= reference_percentile <= 100:
        raise ValueError(f"reference_percentile must be in [0, 100], got {reference_percentile}")
    check_name(name)
    if mask not in MASK_KINDS:
        raise ValueError(f"unknown mask {mask!r}; choose one of: {', '.join(MASK_KINDS)}")
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    started = time.monotonic()
    info = probe(source)
    model, model_id = load_stylesync(profile, weights)
    cfg = model.cfg
    size = cfg.face_size
    max_frames = max(1, round(max_seconds * FPS))

    landmarks, detected = track_face(info, max_frames, show_progress)
    count = len(landmarks)
    raw = frame_to_crop(landmarks, size)
    transforms = smooth_transforms(raw, smoothing)
    check_face_size(transforms, landmarks, cfg.name, size)
    reference_index = choose_reference(landmarks, reference_percentile)
    hd_choice = choose_hd(hd, cfg.name, transforms)

    root = Path(root) if root is not None else avatars_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    partial = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        (partial / "frames").mkdir(parents=True)
        (partial / "features").mkdir()
        reference = warp_to_crop(nth_frame(info, reference_index), transforms[reference_index], size)
        _render_frames(info, model, transforms, landmarks, reference, mask, partial, show_progress)
        np.save(partial / "transforms.npy", transforms)
        np.save(partial / "landmarks.npy", landmarks.astype(np.float32))
        if idle_loop == "quiet":
            span = min(count, round(QUIET_SECONDS * FPS))
            first = quiet_stretch(mouth_opening(landmarks), span)
            loop, loop_rule = (
                ping_pong(span, first),
                f"ping-pong over frames {first}-{first + span - 1}, the quietest mouth",
            )
        else:
            loop, loop_rule = ping_pong(count), "ping-pong over every frame"
        np.save(partial / "idle_loop.npy", loop)
        if hd_choice.get("method") == "detail":
            hd_choice["bank_frames"] = write_bank(partial, lambda i: read_frame(partial, i), transforms, size)
        mel_cfg = MelConfig()
        samples, audio_sync = template_audio(info, count, audio_offset_ms, landmarks, detected, mel_cfg)
        write_wav(partial / "audio.wav", samples, mel_cfg.sample_rate)
        first = cv2.imread(str(frame_file(partial, 0)))
        files = {str(p.relative_to(partial)): sha256_file(p) for p in sorted(partial.rglob("*")) if p.is_file()}
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_id=model_id,
            profile=cfg.name,
            mask=mask,
            fps=FPS,
            frame_size=(int(first.shape[1]), int(first.shape[0])),
            crop_size=size,
            style_layers=cfg.num_layers,
            frame_count=count,
            reference_frame=reference_index,
            source=Source(
                path=str(Path(source).resolve()),
                kind=info.kind,
                width=info.width,
                height=info.height,
                fps=float(info.fps),
                has_audio=info.has_audio,
            ),
            audio=Audio("audio.wav", mel_cfg.sample_rate, count * mel_cfg.samples_per_frame),
            files=files,
            extra={
                "lipstream_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "region_rows": cfg.region_rows,
                "reference_rule": f"mouth opening nearest the {reference_percentile:g}th percentile of the clip",
                "detected_frames": int(detected.sum()),
                "interpolated_frames": int((~detected).sum()),
                "smoothing_sigma_frames": smoothing,
                "crop_jitter": {"raw": centre_jitter(raw, size), "smoothed": centre_jitter(transforms, size)},
                "idle_loop": loop_rule,
                "hd": hd_choice,
            }
            | ({} if audio_sync is None else {"audio_sync": audio_sync.as_dict()}),
        )
        manifest.write(partial)
        _replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return PrepareResult(final, manifest, time.monotonic() - started, audio_sync)


def template_audio(
    info: SourceInfo, count: int, offset_ms: int, landmarks: np.ndarray, detected: np.ndarray, cfg: MelConfig
) -> tuple[np.ndarray, AudioSync | None]:
    """The sound of the template's `count` frames, shifted by `offset_ms`, and how it follows the mouth
    (None without sound)."""
    wanted = count * cfg.samples_per_frame
    offset = round(offset_ms * cfg.sample_rate / 1000)
    samples = shift_audio(read_audio(info, cfg.sample_rate, wanted + max(0, -offset)), offset)[:wanted]
    if not info.has_audio:
        return samples, None
    opening = np.where(detected, mouth_opening(landmarks), np.nan)
    return samples, measure_audio_sync(opening, melspectrogram(samples), offset_ms)


def _replace(partial: Path, final: Path) -> None:
    """Moves the finished folder into place; an existing avatar of that name is replaced whole."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@torch.inference_mode()
def _render_frames(
    info: SourceInfo,
    model: torch.nn.Module,
    transforms: np.ndarray,
    landmarks: np.ndarray,
    reference: np.ndarray,
    mask_kind: str,
    out: Path,
    show: bool,
) -> None:
    """Pass 2: crops, masks, features and JPEGs, BATCH frames at a time."""
    cfg = model.cfg
    size, count = cfg.face_size, len(transforms)

    def array(relative: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        # Written straight to disk, so a long template never needs its whole cache in memory.
        return np.lib.format.open_memmap(out / relative, mode="w+", dtype=dtype, shape=(count, *shape))

    crops = array("crops.npy", (size, size, 3), np.uint8)
    masks = array("masks.npy", (size, size), np.uint8)
    paste = array("paste_masks.npy", (size, size), np.uint8)
    maps = [array(f"features/maps_{i:02d}.npy", shape, np.float16) for i, shape in enumerate(cfg.face_map_shapes())]
    f_f = array("features/f_f.npy", (cfg.face_dim,), np.float32)
    delta_w = array("features/delta_w.npy", (cfg.num_layers, cfg.w_dim), np.float32)
    reference_tensor = to_tensor(reference[None])
    progress = Progress("prepare", count, enabled=show)
    features = (maps, f_f, delta_w)

    def flush(start: int, frames: list[np.ndarray]) -> None:
        for offset, frame in enumerate(frames):
            write_jpeg(frame_file(out, start + offset), frame)
        _encode(model, slice(start, start + len(frames)), reference_tensor, crops, masks, features)
        progress.step(len(frames))

    batch: list[np.ndarray] = []
    start = 0
    for i, frame in enumerate(iter_frames(info, FPS, count)):
        crops[i] = warp_to_crop(frame, transforms[i], size)
        masks[i] = lower_face_mask(mask_kind, crop_landmarks(landmarks[i], transforms[i]), size).astype(np.uint8)
        paste[i] = np.round(paste_mask(masks[i].astype(np.float32), cfg.region_rows) * 255).astype(np.uint8)
        batch.append(frame)
        if len(batch) == BATCH:
            flush(start, batch)
            start, batch = start + BATCH, []
    if batch:
        flush(start, batch)
    progress.close()
    for written in (crops, masks, paste, *maps, f_f, delta_w):
        written.flush()


def _encode(
    model: torch.nn.Module,
    index: slice,
    reference: torch.Tensor,
    crops: np.ndarray,
    masks: np.ndarray,
    features: tuple[list[np.ndarray], np.ndarray, np.ndarray],
) -> None:
    """Face features of the frames in `index`, written into `features` (maps, f_f, dW)."""
    maps, f_f, delta_w = features
    count = index.stop - index.start
    face = model.encode_face(
        to_tensor(crops[index]),
        reference.expand(count, -1, -1, -1),
        torch.from_numpy(np.array(masks[index])).float()[:, None],
    )
    for layer, fmap in enumerate(face.maps):
        maps[layer][index] = fmap.numpy()
    f_f[index], delta_w[index] = face.f_f.numpy(), face.delta_w.numpy()


@torch.inference_mode()
def refresh_features(folder: Path, weights: Path, extra: dict, face_encoder_changed: bool = True) -> Manifest:
    """Re-encodes a prepared avatar's features with other weights of its profile (its
    personalised model), in place: the manifest gets their model id, `weights` (relative to the
    folder), `extra`, and new checksums. Returns the manifest. Where the face encoder is the one that
    made the cached maps (`face_encoder_changed=False`: personalisation keeps it frozen), only dW is
    recomputed, from the cached f_f."""
    manifest = Manifest.read(folder)
    model, model_id = load_stylesync(manifest.profile, weights)
    count = manifest.frame_count
    f_f = np.load(folder / "features/f_f.npy", mmap_mode="r+")
    delta_w = np.load(folder / "features/delta_w.npy", mmap_mode="r+")
    if face_encoder_changed:
        crops = np.load(folder / "crops.npy", mmap_mode="r")
        masks = np.load(folder / "masks.npy", mmap_mode="r")
        maps = [np.load(folder / f"features/maps_{i:02d}.npy", mmap_mode="r+") for i in range(model.cfg.num_layers)]
        reference = to_tensor(np.asarray(crops[manifest.reference_frame])[None])
        for start in range(0, count, BATCH):
            _encode(model, slice(start, min(start + BATCH, count)), reference, crops, masks, (maps, f_f, delta_w))
        for written in maps:
            written.flush()
    else:
        for start in range(0, count, 256):
            part = slice(start, min(start + 256, count))
            delta_w[part] = model.delta_w(torch.from_numpy(np.array(f_f[part]))).numpy()
    for written in (f_f, delta_w):
        written.flush()
    (folder / CHANNEL_SHIFT).unlink(missing_ok=True)  # a model of its own carries its whole shift
    return rewrite_manifest(folder, manifest, model_id=model_id, weights=str(weights.relative_to(folder)), extra=extra)


@torch.inference_mode()
def apply_channel_personalization(folder: Path, params: ChannelPersonalization, extra: dict) -> Manifest:
    """Gives a prepared avatar personal parameters that the general model serves (`personalize
    --delta-p channels`), in place: dW of every frame from the personal head and the cached f_f, and the
    per-channel shift as features/delta_p.npy. The model id is the general one's, which the shift
    must be relative to (an avatar personalised before with a model of its own goes back to it: that
    model kept the general face encoder, whose features the avatar holds). Returns the manifest."""
    manifest = Manifest.read(folder)
    own_model = manifest.weights is not None
    base = manifest.extra.get("personalized", {}).get("base_model_id") if own_model else manifest.model_id
    if params.base_model_id != base:
        raise ChannelParamsError(
            f"the personal parameters were trained on model {params.base_model_id}, the avatar at {folder} was "
            f"prepared for {manifest.model_id}; personalise it again (lipstream personalize {folder.name})"
        )
    head = params.head(get_profile(manifest.profile))
    f_f = np.load(folder / "features/f_f.npy", mmap_mode="r")
    delta_w = np.load(folder / "features/delta_w.npy", mmap_mode="r+")
    for start in range(0, manifest.frame_count, 256):
        part = slice(start, min(start + 256, manifest.frame_count))
        delta_w[part] = head(torch.from_numpy(np.array(f_f[part]))).numpy()
    delta_w.flush()
    np.save(folder / CHANNEL_SHIFT, params.delta_p.numpy().astype(np.float32))
    return rewrite_manifest(folder, manifest, model_id=params.base_model_id, weights=None, extra=extra)


def rewrite_manifest(folder: Path, manifest: Manifest, extra: dict, **changes: object) -> Manifest:
    """The manifest with `changes`, `extra` merged in, and the checksums of the folder's files now."""
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and p.suffix not in (".jsonl", ".png", ".tmp")
    }
    manifest = manifest.replace(files=files, extra=manifest.extra | extra, **changes)
    manifest.write(folder)
    return manifest
