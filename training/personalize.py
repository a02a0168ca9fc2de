"""`lipstream personalize AVATAR`: StyleSync's personalised optimisation (§3.3) on an avatar's template.

What is learned, on top of the general `rt` weights:
- dW = MLP_dw(f_f): the personalisation head (models.personalization.DeltaW), one style offset per
  style-conv layer, from the template's face feature;
- dP: a shift of every generator parameter (the generator is tuned, starting from the general one).

Both carry the L2 penalty of Eq. 6, L_p = L_g + lambda_p (sum dW^2 + sum dP^2). E_a, E_face and the
mapping network stay frozen (the paper: E_a is person-agnostic, E_face would overfit one person).
Samples: five consecutive frames of the template with their audio and a reference frame >= 1 s
away, as in general training, mixed 1:1 with samples of the general training data; `epochs` passes
over the template (the paper: 5). L_g is the general objective without its adversarial term: the
shipped weights carry no discriminator.

The result is stored with the avatar: `personal/<profile>.pt` (fp16, the full personalised model),
the cached dW of every frame, and idle frames rendered with it; the manifest's model id becomes the
personalised model's, and `serve` / `render` load the avatar's own weights by themselves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lipstream.avatars.avatar import Avatar
from lipstream.dsp import MelConfig, melspectrogram, read_wav
from lipstream.models.weights import load_stylesync

from .generator_train import GeneratorTrainConfig, GeneratorTrainer, load_expert, plot_curves
from .loaders import SYNC_FRAMES, Clip, GeneratorSamples, load_clips

PERSONAL_DIR = "personal"
LOG = "personalize.jsonl"


class PersonalizeError(ValueError):
    """An avatar or training cache that personalisation cannot use; the message says how to fix it."""


@dataclass
class PersonalizeConfig:
    epochs: float = 5.0  # passes over the template's frames (in samples of five frames)
    batch: int = 4  # template samples per step; as many general ones join them (1:1)
    lr: float = 1e-4
    lambda_p: float = 1e-3  # Eq. 6 penalty on sum dW^2 + sum dP^2
    hold_out_seconds: float = 0.0  # the template's last seconds, kept out (for evaluation)
    seed: int = 0


def template_clip(avatar: Avatar, hold_out_seconds: float = 0.0) -> Clip:
    """The avatar's template as a training clip: its aligned crops and the mel of its own audio."""
    if not avatar.manifest.get("source", {}).get("has_audio"):
        raise PersonalizeError(
            f"avatar {avatar.name!r} was prepared from a source without audio; personalisation learns from the "
            "template's own speech: prepare it from a video with its sound track"
        )
    held = round(hold_out_seconds * 25)
    frames = (avatar.frame_count - held) // SYNC_FRAMES * SYNC_FRAMES
    if frames < 10 * SYNC_FRAMES:
        raise PersonalizeError(
            f"avatar {avatar.name!r} has {avatar.frame_count} frames; {held} held out leave {frames}, and "
            "personalisation needs at least 2 s of template (prepare it with a longer --max-seconds)"
        )
    samples, rate = read_wav(avatar.path / avatar.manifest["audio"]["file"])
    if rate != MelConfig().sample_rate:
        raise PersonalizeError(f"{avatar.name}: audio.wav is {rate} Hz, expected 16 kHz; prepare the avatar again")
    clip = Clip(avatar.path, {"clip_id": avatar.name, "identity": f"avatar:{avatar.name}", "frames": frames})
    clip.__dict__["mel"] = melspectrogram(samples).astype(np.float32)
    return clip


class Personalizer(GeneratorTrainer):
    """The general trainer's losses and step with other trainable parameters, a penalty, no discriminator."""

    def __init__(self, profile: str, weights: str | Path | None, expert: Path, config: PersonalizeConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = GeneratorTrainConfig(
            profile=profile,
            seed=config.seed,
            batch=config.batch,
            lr=config.lr,
            gan_from_step=2**62,  # never: no discriminator ships with the weights
            expert=str(expert),
        )
        self.lambda_p = config.lambda_p
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.base_id = load_stylesync(profile, weights)
        self.model = model.to(self.device).train().requires_grad_(False)
        self.model.generator.requires_grad_(True)
        self.model.delta_w.requires_grad_(True)
        self.general = {n: p.detach().clone() for n, p in self.model.generator.named_parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.g_opt = torch.optim.Adam(trainable, lr=config.lr, betas=(0.5, 0.99))
        self.expert = load_expert(expert, self.device)
        self.rows = self.model.cfg.region_rows
        self.step = 0
        self._delta_w: torch.Tensor | None = None

    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = batch["targets"].flatten(0, 1)
        mels = batch["mels"].flatten(0, 1)
        reference = batch["reference"].repeat_interleave(SYNC_FRAMES, dim=0)
        mask = batch["mask"].repeat_interleave(SYNC_FRAMES, dim=0)
        face = self.model.encode_face(targets, reference, mask)
        self._delta_w = face.delta_w
        fake = self.model.render(mels, face.f_f, face.delta_w, face.maps)
        return fake, targets[..., -self.rows :, :], targets

    def penalties(self) -> dict[str, torch.Tensor]:
        """Eq. 6: sum of squares of dW (per sample, averaged over the batch) and of dP."""
        delta_w = self._delta_w.pow(2).sum(dim=(1, 2)).mean()
        delta_p = sum((p - self.general[n]).pow(2).sum() for n, p in self.model.generator.named_parameters())
        return {"delta_w_sq": delta_w, "delta_p_sq": delta_p, "penalty": self.lambda_p * (delta_w + delta_p)}


def _mixed(template: Clip, general: list[Clip], config: PersonalizeConfig, steps: int) -> Iterator[dict]:
    """Batches of `batch` template samples and `batch` general samples, concatenated."""
    own = GeneratorSamples([template], steps * config.batch, seed=config.seed)
    other = GeneratorSamples(general, steps * config.batch, seed=config.seed + 1, grid_share=0.5, augment=True)
    for mine, theirs in zip(
        DataLoader(own, batch_size=config.batch), DataLoader(other, batch_size=config.batch), strict=True
    ):
        yield {k: torch.cat([mine[k], theirs[k]]) for k in mine}


def personalize(
    avatar: Avatar,
    general_cache: Path,
    expert: Path,
    config: PersonalizeConfig,
    weights: str | Path | None = None,
    log: bool = True,
) -> dict:
    """Trains dW and dP for `avatar`, then stores them with it (see the module notes). Returns a summary."""
    from lipstream.avatars.prepare import refresh_features

    profile = avatar.manifest.get("profile", "rt")
    template = template_clip(avatar, config.hold_out_seconds)
    general = load_clips(general_cache, "train")
    if not general:
        raise PersonalizeError(
            f"no general training clips in {general_cache}; personalisation mixes the template 1:1 with them: "
            "build the training cache first (lipstream dataset build)"
        )
    trainer = Personalizer(profile, weights, expert, config)
    steps = max(1, round(config.epochs * template.frames / SYNC_FRAMES / config.batch))
    folder = avatar.path / PERSONAL_DIR
    folder.mkdir(exist_ok=True)
    history = folder / LOG
    history.unlink(missing_ok=True)
    started = time.monotonic()
    window: list[dict[str, float]] = []
    for batch in _mixed(template, general, config, steps):
        window.append(trainer.train_step(batch))
        if trainer.step % 25 == 0 or trainer.step == steps:
            line = {"step": trainer.step, "seconds": round(time.monotonic() - started, 1)}
            line |= {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            window.clear()
            with history.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            if log:
                print(json.dumps(line), flush=True)
    train_seconds = time.monotonic() - started
    plot_curves(history, folder / "personalize_curves.png")
    path = folder / f"{profile}.pt"
    torch.save({k: v.detach().cpu().half() for k, v in trainer.model.state_dict().items()}, path)
    summary = {
        "base_model_id": trainer.base_id,
        "weights": f"{PERSONAL_DIR}/{path.name}",
        "template_frames": template.frames,
        "held_out_frames": avatar.frame_count - template.frames,
        "epochs": config.epochs,
        "steps": steps,
        "batch": f"{config.batch} template + {config.batch} general samples of {SYNC_FRAMES} frames",
        "lr": config.lr,
        "lambda_p": config.lambda_p,
        "train_seconds": round(train_seconds, 1),
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
    }
    refreshed = refresh_features(avatar.path, path, {"personalized": summary})
    summary["model_id"] = refreshed["model_id"]
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    return summary
