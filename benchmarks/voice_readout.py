"""Experiment, not product code: does reading an unseen voice's audio feature the way that voice encodes
its mouth raise the opening correlation?

`benchmarks/opening_ceiling.py` found the audio encoder's feature f_a carries much more of an unseen
speaker's mouth opening (a ridge readout fitted on her own 120-s template: r 0.73 with context, 0.62
without) than the general model gets out of it (0.39), which reads her as a readout fitted on GRID s1
does (0.45). Here the model hears, per frame, its normalised f_a moved along GRID s1's readout direction
g1 so that s1's readout gives what hers (g_p, fitted on the avatar's template only) predicts:

    f' = f + k * u * ((f . g_p + c_p) - (f . g1 + c1)),   u = g1 / |g1|^2

a rank-1 change per voice (129 numbers), applied by patching the audio encoder of the PyTorch engine in
this process, and scored by `evaluate --video` on the speaker's held-out clip.

python -m benchmarks.voice_readout --clip TEST.mp4 --template TEMPLATE.mp4 --reference S1_CLIP.mp4
       [--strength 0,1,2,3] [--template-seconds 30] [--max-seconds 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lipstream.models.audio_encoder import AudioEncoder
from lipstream.models.layers import normalize_2nd_moment
from lipstream.models.weights import load_stylesync
from lipstream.training.config import VideoEvalOptions

from .opening_ceiling import _fit, audio_features, cross_validated_r, real_opening
from .report import git_commit, machine_info, output_stem, write_json
from .video_eval import evaluate_video

SCORES = ("opening_correlation", "opening_amplitude_ratio", "lip_audio_r", "lmd_px", "psnr_db", "ssim")


def readout(path: Path, model: torch.nn.Module) -> tuple[np.ndarray, float]:
    """(g, c): the ridge readout of a clip's real opening from its normalised f_a, as f . g + c."""
    y = real_opening(path)
    x = audio_features(path, len(y), model)["fa"]
    mean, scale, w, bias = _fit(x, y, cross_validated_r(x, y)["penalty"])
    g = w / scale
    return g, bias - float(mean @ g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, required=True, help="the speaker's held-out clip, scored")
    parser.add_argument("--template", type=Path, required=True, help="the speaker's template: avatar and readout")
    parser.add_argument("--reference", type=Path, required=True, help="a clip of the voice the model learnt")
    parser.add_argument("--strength", default="0,1,2,3", help="values of k (0: the model as it is)")
    parser.add_argument("--template-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    model, model_id = load_stylesync("rt", None)
    model.eval()
    g1, c1 = readout(args.reference, model)
    gp, cp = readout(args.template, model)
    u = torch.from_numpy((g1 / np.dot(g1, g1)).astype(np.float32))
    g1_t, gp_t = torch.from_numpy(g1.astype(np.float32)), torch.from_numpy(gp.astype(np.float32))
    plain = AudioEncoder.forward
    stem = output_stem(args.out, "voice-readout")
    rows = {}
    for k in map(float, args.strength.split(",")):

        def forward(self: AudioEncoder, mel: torch.Tensor, k: float = k) -> torch.Tensor:
            f = normalize_2nd_moment(plain(self, mel))
            return f + k * ((f @ gp_t + cp) - (f @ g1_t + c1))[:, None] * u[None]

        AudioEncoder.forward = forward
        try:
            options = VideoEvalOptions(
                template=args.template,
                template_seconds=args.template_seconds,
                max_seconds=args.max_seconds,
                engine="torch",
                show_progress=False,
            )
            report = evaluate_video(args.clip, stem.parent / f"{stem.name}-k{k:g}", options)
        finally:
            AudioEncoder.forward = plain
        rows[f"{k:g}"] = {key: report["systems"]["model"][key] for key in SCORES}
        print(f"k={k:g}", " ".join(f"{key}={value:.3f}" for key, value in rows[f"{k:g}"].items()), flush=True)
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "voice_readout",
            "machine": machine_info(),
            "commit": git_commit(),
            "model_id": model_id,
            "clip": str(args.clip),
            "template": str(args.template),
            "reference": str(args.reference),
            "cosine_g1_gp": float(g1 @ gp / np.linalg.norm(g1) / np.linalg.norm(gp)),
            "by_strength": rows,
        },
    )
    print(stem.with_suffix(".json"))


if __name__ == "__main__":
    main()
