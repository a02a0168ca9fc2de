"""How much of a person's real mouth opening their own audio predicts: a ceiling for the opening
correlation that `lipstream evaluate --video` reports.

For each clip: the real inner-lip gap per frame (mediapipe, over the face's width), and per frame the
audio as the model hears it (the mel window of that frame, voice-normalised as a session does). A ridge
regression reads the opening from one of three features, scored by cross-validation over contiguous
blocks (the frames within 8 of a test block are left out of its training):
- `fa`: the audio encoder's feature (unit RMS, as the mapping takes it);
- `fa_context`: the features of frames t-2 .. t+2 side by side;
- `mel`: the mel window itself, pooled to 20 bands.
The readout is fitted on the clip's own person, so it is what a person-specific linear model with this
audio window could reach; the general model's opening correlation on the same clip says how much of it
the shipped model reaches. `--fit-on CLIP` fits the readout on another clip (another person's voice,
the way the general model learnt it) and scores it on each clip whole; given several times, on all of
them pooled, each clip's opening standardised (does a readout learnt from many voices carry over?).

python -m benchmarks.opening_ceiling NAME=CLIP.mp4 ... [--fit-on NAME=CLIP.mp4 ...] [--weights rt.pt]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from lipstream.avatars.landmarks import FaceTracker
from lipstream.avatars.source import iter_frames, probe, read_audio
from lipstream.dsp import MelConfig, mel_windows
from lipstream.dsp.media import FPS
from lipstream.dsp.mel import melspectrogram
from lipstream.dsp.voice import DEFAULT_REFERENCE, VoiceReference, normalise_speech
from lipstream.models.layers import normalize_2nd_moment
from lipstream.models.weights import load_stylesync

from .report import git_commit, machine_info, output_stem, write_json

FOLDS = 5
GUARD = 8  # frames either side of a test block kept out of its training (the windows overlap)
RIDGE = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # penalties tried, per sample and standardised feature
CONTEXT = 2  # frames either side in `fa_context`
MIN_FRAMES = 250  # below 10 s the cross-validated readout says little: such clips are reported, not scored
MAX_SECONDS = 180.0


def real_opening(path: Path) -> np.ndarray:
    """The inner-lip gap over the cheek-to-cheek width, per frame at 25 fps. [T]"""
    info = probe(path)
    with FaceTracker() as tracker:
        for frame in iter_frames(info, FPS, round(MAX_SECONDS * FPS)):
            tracker.add(frame)
        points = tracker.finish().landmarks
    return np.linalg.norm(points[:, 13] - points[:, 14], axis=1) / np.linalg.norm(
        points[:, 234] - points[:, 454], axis=1
    )


def audio_features(path: Path, frames: int, model: torch.nn.Module) -> dict[str, np.ndarray]:
    cfg = MelConfig()
    info = probe(path)
    samples = read_audio(info, cfg.sample_rate, frames * cfg.sample_rate // FPS)
    mel = normalise_speech(melspectrogram(samples, cfg), VoiceReference.from_json(DEFAULT_REFERENCE), cfg)
    windows = mel_windows(mel, 0, frames, cfg)  # [T, 80, 16]
    with torch.no_grad():
        fa = normalize_2nd_moment(model.audio_encoder(torch.from_numpy(windows)[:, None])).numpy()
    padded = np.pad(fa, ((CONTEXT, CONTEXT), (0, 0)), mode="edge")
    context = np.concatenate([padded[i : i + frames] for i in range(2 * CONTEXT + 1)], axis=1)
    pooled = windows.reshape(frames, 20, cfg.n_mels // 20, cfg.window_frames).mean(axis=2).reshape(frames, -1)
    return {"fa": fa, "fa_context": context, "mel": pooled}


def _fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    w = np.linalg.solve(z.T @ z + penalty * len(y) * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mean, scale, w, float(y.mean())


def _predict(model: tuple, x: np.ndarray) -> np.ndarray:
    mean, scale, w, bias = model
    return (x - mean) / scale @ w + bias


def cross_validated_r(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson's r of the held-out predictions with the truth, at the best penalty (the choice of one
    number of six makes it a little optimistic)."""
    edges = np.linspace(0, len(y), FOLDS + 1).astype(int)
    best = {"r": -1.0, "penalty": None}
    for penalty in RIDGE:
        predicted = np.zeros(len(y))
        for first, last in itertools.pairwise(edges):
            train = np.r_[0 : max(first - GUARD, 0), min(last + GUARD, len(y)) : len(y)]
            predicted[first:last] = _predict(_fit(x[train], y[train], penalty), x[first:last])
        r = float(np.corrcoef(predicted, y)[0, 1])
        if r > best["r"]:
            best = {"r": r, "penalty": penalty}
    return best


def named(text: str) -> tuple[str, Path]:
    name, _, path = text.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CLIP.mp4, got {text!r}")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+", type=named, help="NAME=CLIP.mp4, a talking-head video with its sound")
    parser.add_argument(
        "--fit-on",
        type=named,
        action="append",
        help="NAME=CLIP.mp4: fit the readout here (repeat to pool several), score it on the clips",
    )
    parser.add_argument("--weights", help="rt weights whose audio encoder is read (default: the shipped ones)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    model, model_id = load_stylesync("rt", args.weights)
    model.eval()

    def measured(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        y = real_opening(path)
        return y, audio_features(path, len(y), model)

    fitted, fit_name = None, None
    if args.fit_on:
        pooled = [measured(path) for _, path in args.fit_on]
        y_fit = np.concatenate([(y - y.mean()) / (y.std() + 1e-9) for y, _ in pooled])
        x_fit = {key: np.concatenate([x[key] for _, x in pooled]) for key in pooled[0][1]}
        fitted = {key: _fit(x, y_fit, cross_validated_r(x, y_fit)["penalty"]) for key, x in x_fit.items()}
        fit_name = args.fit_on[0][0] if len(args.fit_on) == 1 else f"{len(args.fit_on)}_clips"
    rows = {}
    for name, path in args.clips:
        y, features = measured(path)
        row: dict = {"clip": str(path), "frames": len(y)}
        if len(y) >= MIN_FRAMES:
            row |= {f"{key}_r": cross_validated_r(x, y)["r"] for key, x in features.items()}
        if fitted is not None:
            row |= {
                f"{key}_r_fit_on_{fit_name}": float(np.corrcoef(_predict(fitted[key], x), y)[0, 1])
                for key, x in features.items()
            }
        rows[name] = row
        print(name, " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    stem = output_stem(args.out, "opening-ceiling")
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "opening_ceiling",
            "machine": machine_info(),
            "commit": git_commit(),
            "model_id": model_id,
            "fit_on": [str(path) for _, path in args.fit_on or []],
            "clips": rows,
        },
    )
    print(stem.with_suffix(".json"))


if __name__ == "__main__":
    main()
