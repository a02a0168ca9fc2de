"""`lipstream dataset build`: videos -> a training cache of aligned crops, landmarks, mel features.

The face pipeline is `prepare`'s (tracking, alignment, smoothing), so training sees faces exactly as
an avatar does. One folder per clip under the cache root, written atomically, each with:

    crops.npy      [N, S, S, 3] uint8 aligned face crops of the profile's size
    landmarks.npy  [N, 478, 2] float16 landmarks in crop pixels (mouth landmarks for LMD, pose masks)
    mel.npy        [80, T] float16 log-mel of the clip's audio (frame k <-> samples 640 k .. 640 k + 640)
    audio.npy      [640 N] float16 the clip's audio at 16 kHz, from which training hears other voices
                   (the voice augmentation of loaders.py warps its spectrum)
    meta.json      source, identity, split, frame count, interpolated frames

`index.json` lists the clips. Building again skips clips already built from an unchanged source, so
the cache grows incrementally. The cache lives outside git (default <cache>/dataset/<profile>).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipstream.avatars.align import frame_to_crop, mouth_opening, smooth_transforms, warp_to_crop
from lipstream.avatars.av_sync import measure_audio_sync
from lipstream.avatars.errors import SourceError
from lipstream.avatars.masks import crop_landmarks
from lipstream.avatars.prepare import check_face_size, track_face
from lipstream.avatars.source import iter_frames, probe, read_audio
from lipstream.dsp import FPS, MelConfig, melspectrogram
from lipstream.dsp.voice import VoiceReference, speech_mask
from lipstream.models.config import get_profile
from lipstream.paths import cache_dir
from lipstream.progress import Progress

# Identities of ../shared/data/talking kept out of training: the unseen-face test set.
HELD_OUT_IDENTITIES = ("hdtf_KatieHill", "vox2_Input_00098", "may", "news_anchor_de", "trump")
INDEX = "index.json"


class TrainingCacheError(FileNotFoundError):
    """A folder given as a training cache that holds none; the message says how to build one."""


def read_index(root: Path) -> dict:
    """The index of the training cache at `root`."""
    path = root / INDEX
    if not path.is_file():
        raise TrainingCacheError(
            f"{root} holds no training cache ({INDEX}); build one with `lipstream dataset build` "
            "(README: Training data and the lip-sync expert), or give the cache's folder with --cache"
        )
    return json.loads(path.read_text())


@dataclass(frozen=True)
class ClipSource:
    path: Path
    clip_id: str
    identity: str
    split: str  # train, val, test


def talking_identity(stem: str) -> str:
    """The person in a clip, from its file name: a 3-digit take number, a duration or "short" at the
    end is dropped (hdtf_KatieHill_000 -> hdtf_KatieHill, may_5s -> may); VoxCeleb ids stay."""
    return re.sub(r"_(\d{3}|\d+s|short)$", "", stem)


def grid_sources(root: Path) -> list[ClipSource]:
    splits = json.loads((root / "splits.json").read_text())
    return [
        ClipSource(root / "video" / f"{name}.mp4", f"grid_{name}", "grid_s1", split)
        for split, names in splits.items()
        for name in names
    ]


def talking_sources(root: Path) -> list[ClipSource]:
    sources = []
    for path in sorted(root.glob("*.mp4")):
        identity = talking_identity(path.stem)
        split = "test" if identity in HELD_OUT_IDENTITIES else "train"
        sources.append(ClipSource(path, f"talking_{path.stem}", identity, split))
    return sources


def default_root(profile: str, crop_size: int | None = None) -> Path:
    """<cache>/dataset/<profile>, or <profile>-<size> for crops of another size than the profile's."""
    name = profile if crop_size in (None, get_profile(profile).face_size) else f"{profile}-{crop_size}"
    return cache_dir() / "dataset" / name


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build_clip(
    source: ClipSource, out: Path, profile: str, max_seconds: float = 120.0, crop_size: int | None = None
) -> dict:
    """Processes one clip into `out` (atomically). Returns its meta. `crop_size` overrides the profile's
    crop (the region upsampler trains on 256-px crops of the same alignment)."""
    cfg = get_profile(profile)
    size = crop_size or cfg.face_size
    info = probe(source.path)
    max_frames = round(max_seconds * FPS)
    landmarks, detected = track_face(info, max_frames, show=False)
    transforms = smooth_transforms(frame_to_crop(landmarks, size), sigma=2.0)
    check_face_size(transforms, landmarks, cfg.name, size)
    count = len(landmarks)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        crops = np.lib.format.open_memmap(partial / "crops.npy", "w+", np.uint8, (count, size, size, 3))
        for i, frame in enumerate(iter_frames(info, FPS, count)):
            crops[i] = warp_to_crop(frame, transforms[i], size)
        crops.flush()
        in_crop = np.stack([crop_landmarks(landmarks[i], transforms[i]) for i in range(count)])
        np.save(partial / "landmarks.npy", in_crop.astype(np.float16))
        mel_cfg = MelConfig()
        audio = read_audio(info, mel_cfg.sample_rate, count * mel_cfg.samples_per_frame)
        mel = melspectrogram(audio, mel_cfg)
        np.save(partial / "mel.npy", mel.astype(np.float16))
        np.save(partial / "audio.npy", audio.astype(np.float16))  # not int16: decoded audio may pass 1
        meta = {
            "clip_id": source.clip_id,
            "source": str(source.path.resolve()),
            "source_stamp": _stamp(source.path),
            "identity": source.identity,
            "split": source.split,
            "profile": cfg.name,
            "crop_size": size,
            # crop pixels per source pixel, median over the frames: above 1 the crop is an enlargement
            "crop_scale": round(float(np.median(np.hypot(transforms[:, 0, 0], transforms[:, 1, 0]))), 3),
            "frames": count,
            "interpolated_frames": int((~detected).sum()),
            "has_audio": info.has_audio,
        }
        if info.has_audio and (found := measure_audio_sync(np.where(detected, mouth_opening(in_crop), np.nan), mel)):
            meta["audio_sync"] = found.as_dict()  # a sound track shifted against the picture trains the shift
        (partial / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def build_dataset(
    sources: Iterable[ClipSource],
    root: Path,
    profile: str = "rt",
    show_progress: bool = True,
    max_seconds: float = 120.0,
    crop_size: int | None = None,
) -> dict:
    """Builds (or extends) the cache at `root`; returns the index. Clips that fail are listed, not fatal."""
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / INDEX
    size = crop_size or get_profile(profile).face_size
    fresh = {"profile": profile, "crop_size": size, "clips": {}, "failed": {}}
    index = json.loads(index_path.read_text()) if index_path.is_file() else fresh
    held = (index.get("profile"), index.get("crop_size", get_profile(index.get("profile", profile)).face_size))
    if held != (profile, size):
        raise ValueError(
            f"{root} holds a {held[0]} cache of {held[1]}-px crops; use another folder for {profile} at {size}"
        )
    sources = list(sources)
    progress = Progress("dataset", len(sources), unit="clips", enabled=show_progress)
    for source in sources:
        out = root / source.clip_id
        known = index["clips"].get(source.clip_id)
        built = all((out / name).is_file() for name in ("meta.json", "audio.npy"))  # caches before audio.npy: again
        if known and known.get("source_stamp") == _stamp(source.path) and built:
            if (known["split"], known["identity"]) != (source.split, source.identity):  # split rules changed
                known |= {"split": source.split, "identity": source.identity}
                (out / "meta.json").write_text(json.dumps(known, indent=2))
                index_path.write_text(json.dumps(index, indent=1))
            progress.step()
            continue
        try:
            index["clips"][source.clip_id] = build_clip(source, out, profile, max_seconds, size)
            index["failed"].pop(source.clip_id, None)
        except SourceError as err:
            index["failed"][source.clip_id] = str(err)
        index_path.write_text(json.dumps(index, indent=1))
        progress.step()
    progress.close()
    return index


def measure_voice_reference(root: Path, identity: str = "grid_s1", split: str = "train") -> tuple[VoiceReference, int]:
    """The mean speech spectrum of one identity's clips in the cache at `root` (each clip's speech frames by
    dsp.voice.speech_mask): the reference that sessions' voices are normalised to. Returns it and the
    number of speech frames it was measured on."""
    clips = [
        c for c, meta in read_index(root)["clips"].items() if meta["identity"] == identity and meta["split"] == split
    ]
    frames = [mel[:, speech_mask(mel)] for mel in (np.load(root / c / "mel.npy").astype(np.float64) for c in clips)]
    if not frames or not sum(f.shape[1] for f in frames):
        raise ValueError(f"no {split} clip of identity {identity!r} with speech in {root}; name one the cache holds")
    speech = np.concatenate(frames, axis=1)
    source = f"{identity} {split} clips of {root.name} ({len(clips)} clips)"
    return VoiceReference(speech.mean(axis=1), source), speech.shape[1]
