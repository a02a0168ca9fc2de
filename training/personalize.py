"""`lipstream personalize AVATAR`: StyleSync's personalised optimisation (§3.3) on an avatar's template.

What is learned, on top of the general `rt` weights:
- dW = MLP_dw(f_f): the personalisation head (models.personalization.DeltaW), one style offset per
  style-conv layer, from the template's face feature;
- dP: a shift of the generator, starting from the general one. With `delta_p="channels"` (the
  default) only its per-channel parameters move: the bias of every style conv and toRGB layer and the
  bias of every style affine (an offset of each style in StyleSpace), 30 vectors and 3919 values for
  `rt`, which the frame graph takes per sample (`delta_p`). With `delta_p="full"` every generator
  parameter moves. Measured on GRID s4 (120 s of template, scored on its 30-s `test` clips): LMD
  1.50 px per channel against 1.45 with every parameter and 2.16 for the general model, SSIM 0.667 /
  0.672 / 0.600, in 8.6 minutes of training instead of 14.4 (same host).

Both carry the L2 penalty of Eq. 6, L_p = L_g + lambda_p (sum dW^2 + sum dP^2). Optionally
(`lambda_motion` > 0) a third term keeps the general model's motion: L1 on the lips' box between what
the audio changes in the personalised mouth, P(audio) - P(silence), and what it changes in the general
one, G(audio) - G(silence), on the same template frames. Why: personalised on 30 s of GRID s4, the mouth
took her look (LMD 2.36 -> 1.83 px on her unseen `test` clips) but moved less, and less in step with the
sound (opening amplitude 0.84 -> 0.61, opening r 0.33 -> 0.19), whether the audio encoder was tuned too
or not, with or without the sync loss, with or without more weight on the lips' L1. With the motion term
(30): amplitude 0.77, opening r 0.25, LMD 1.95; (100): 0.81, 0.31, 2.21
(docs/results/personalize-audio-side.json). It doubles a step's cost. E_a, E_face and the mapping
network stay frozen (the paper: E_a is person-agnostic, E_face would overfit one person).
Samples: five consecutive frames of the template with their audio and a reference frame >= 1 s
away, as in general training, mixed 1:1 with samples of the general training data when a training
cache is at hand (replay), or the template alone on a fresh install; `epochs` passes over the
template (the paper: 5). A checkpoint is written every few minutes and on Ctrl-C; `resume=True`
continues from it with the same samples in the same order. L_g is the general objective without
its adversarial term: the shipped weights carry no discriminator.

The result is stored with the avatar. Per channel: `personal/<profile>-channels.pt` (fp16, the dW head
and dP, models.personalization.ChannelPersonalization), the dW of every frame and
`features/delta_p.npy`; the manifest keeps the general model's id, so any server of that model serves
the avatar beside others. Full: `personal/<profile>.pt` (fp16, the whole personalised model) and the
dW of every frame; the manifest's model id becomes the personalised model's, and `serve` / `render`
load the avatar's own weights by themselves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from lipstream.avatars.avatar import Avatar
from lipstream.dsp import MelConfig, melspectrogram, read_wav
from lipstream.models.discriminator import mouth_crop
from lipstream.models.generator import channel_shift_layout
from lipstream.models.personalization import ChannelPersonalization, channel_shift_of
from lipstream.models.stylesync import FaceFeatures
from lipstream.models.weights import load_stylesync

from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import DELTA_P_MODES, SYNC_FRAMES, GeneratorTrainConfig, PersonalizeConfig
from .dataset import INDEX, default_root
from .generator_train import GeneratorTrainer, load_expert, plot_curves
from .loaders import Clip, GeneratorSamples, load_clips
from .stopping import StopRequest

PERSONAL_DIR = "personal"
LOG = "personalize.jsonl"
CHECKPOINT_SECONDS = 120.0


class PersonalizeError(ValueError):
    """An avatar or training cache that personalisation cannot use; the message says how to fix it."""


def template_clip(avatar: Avatar, hold_out_seconds: float = 0.0) -> Clip:
    """The avatar's template as a training clip: its aligned crops and the mel of its own audio."""
    if not avatar.manifest.source.has_audio:
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
    samples, rate = read_wav(avatar.path / avatar.manifest.audio.file)
    if rate != MelConfig().sample_rate:
        raise PersonalizeError(f"{avatar.name}: audio.wav is {rate} Hz, expected 16 kHz; prepare the avatar again")
    clip = Clip(avatar.path, {"clip_id": avatar.name, "identity": f"avatar:{avatar.name}", "frames": frames})
    clip.__dict__["mel"] = melspectrogram(samples).astype(np.float32)
    return clip


class Personalizer(GeneratorTrainer):
    """The general trainer's losses and step with other trainable parameters, a penalty, no discriminator."""

    def __init__(self, profile: str, weights: str | Path | None, expert: Path, config: PersonalizeConfig) -> None:
        if config.delta_p not in DELTA_P_MODES:
            raise PersonalizeError(f"unknown delta_p {config.delta_p!r}; choose one of: {', '.join(DELTA_P_MODES)}")
        torch.manual_seed(config.seed)
        self.config = GeneratorTrainConfig(
            profile=profile,
            seed=config.seed,
            batch=config.batch,
            lr=config.learning_rate,
            gan_from_step=2**62,  # never: no discriminator ships with the weights
            expert=str(expert),
        )
        self.lambda_p = config.lambda_p
        self.lambda_motion = config.lambda_motion
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.base_id = load_stylesync(profile, weights)
        self.model = model.to(self.device).train().requires_grad_(False)
        channel_vectors = {name for name, _ in channel_shift_layout(self.model.cfg)}
        for name, parameter in self.model.generator.named_parameters():
            parameter.requires_grad_(config.delta_p == "full" or name in channel_vectors)
        self.model.delta_w.requires_grad_(True)
        self.delta_p = config.delta_p
        self.general = {n: p.detach().clone() for n, p in self.model.generator.named_parameters()}
        self.general_model = None  # the frozen general model whose motion the motion term keeps
        if self.lambda_motion > 0:
            self.general_model = load_stylesync(profile, weights)[0].to(self.device).eval().requires_grad_(False)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.g_opt = torch.optim.Adam(trainable, lr=config.learning_rate, betas=(0.5, 0.99))
        self.expert = load_expert(expert, self.device)
        self.rows = self.model.cfg.region_rows
        self.step = 0
        self._delta_w: torch.Tensor | None = None
        self._motion: tuple[torch.Tensor, torch.Tensor] | None = None

    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = batch["targets"].flatten(0, 1)
        mels = batch["mels"].flatten(0, 1)
        reference = batch["reference"].repeat_interleave(SYNC_FRAMES, dim=0)
        mask = batch["mask"].repeat_interleave(SYNC_FRAMES, dim=0)
        face = self.model.encode_face(targets, reference, mask)
        self._delta_w = face.delta_w
        fake = self.model.render(mels, face.f_f, face.delta_w, face.maps)
        if self.general_model is not None:
            self._motion = self._motions(fake, mels, face)
        return fake, targets[..., -self.rows :, :], targets

    def _motions(self, fake: torch.Tensor, mels: torch.Tensor, face: FaceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """What the audio changes in the lips' box: (personalised, general), each render minus the same
        frame's render in silence. The face encoder is frozen, so both models share `face`'s maps and f_f;
        the general model has its own dW."""
        silence = torch.full_like(mels, -MelConfig().max_abs_value)
        mine = fake - self.model.render(silence, face.f_f, face.delta_w, face.maps)
        with torch.no_grad():
            general = self.general_model
            delta_w = general.delta_w(face.f_f)
            theirs = general.render(mels, face.f_f, delta_w, face.maps) - general.render(
                silence, face.f_f, delta_w, face.maps
            )
        cfg = self.model.cfg
        return mouth_crop(mine, cfg), mouth_crop(theirs, cfg)

    def penalties(self) -> dict[str, torch.Tensor]:
        """Eq. 6: sum of squares of dW (per sample, averaged over the batch) and of dP; and the motion
        term when it is on."""
        delta_w = self._delta_w.pow(2).sum(dim=(1, 2)).mean()
        delta_p = sum((p - self.general[n]).pow(2).sum() for n, p in self.model.generator.named_parameters())
        terms = {"delta_w_sq": delta_w, "delta_p_sq": delta_p, "penalty": self.lambda_p * (delta_w + delta_p)}
        if self.general_model is not None:
            terms["motion_l1"] = (self._motion[0] - self._motion[1]).abs().mean()
            terms["penalty"] = terms["penalty"] + self.lambda_motion * terms["motion_l1"]
        return terms


def _batches(
    template: Clip, general: list[Clip], config: PersonalizeConfig, steps: int, first_step: int = 0
) -> Iterator[dict]:
    """Batches of `batch` template samples, and as many general ones concatenated when `general` holds
    clips (replay), from step `first_step` on (the samples of a step do not depend on where a run began)."""
    own = GeneratorSamples([template], steps * config.batch, seed=config.seed)
    rest = Subset(own, range(first_step * config.batch, len(own)))
    if not general:
        yield from DataLoader(rest, batch_size=config.batch)
        return
    other = GeneratorSamples(general, steps * config.batch, seed=config.seed + 1, grid_share=0.5, augment=True)
    others = Subset(other, range(first_step * config.batch, len(other)))
    for mine, theirs in zip(
        DataLoader(rest, batch_size=config.batch), DataLoader(others, batch_size=config.batch), strict=True
    ):
        yield {k: torch.cat([mine[k], theirs[k]]) for k in mine}


def replay_cache(mode: str, cache: Path | None, profile: str) -> Path | None:
    """The training cache to mix in for `--replay` mode "auto" (the given or default cache when it is
    built), "cache" (the given or default one, which must be built) or "none"."""
    if mode == "none":
        return None
    chosen = cache or default_root(profile)
    return chosen if mode == "cache" or cache or (chosen / INDEX).is_file() else None


def replay_clips(cache: Path | None) -> list[Clip]:
    """The general training clips to mix in: none without a cache (a fresh install)."""
    if cache is None:
        return []
    if not (cache / INDEX).is_file():
        raise PersonalizeError(
            f"no training cache at {cache}: build one (lipstream dataset build) or personalise without replay"
        )
    general = load_clips(cache, "train")
    if not general:
        raise PersonalizeError(f"the training cache at {cache} holds no training clips with audio")
    return general


class Interrupted(Exception):
    """Ctrl-C during personalisation: the checkpoint is written; `resume=True` continues from it."""

    def __init__(self, step: int, steps: int, checkpoint: Path) -> None:
        super().__init__(f"stopped at step {step} of {steps}; the checkpoint is {checkpoint}")
        self.step, self.steps, self.checkpoint = step, steps, checkpoint


def _save(trainer: Personalizer, path: Path, seconds: float, replay: str) -> None:
    state = {
        "delta_p": trainer.delta_p,
        "model": trainer.model.state_dict(),
        "g_opt": trainer.g_opt.state_dict(),
        "step": trainer.step,
        "seconds": seconds,
        "replay": replay,
    }
    save_checkpoint(state, path)


def personalize(
    avatar: Avatar,
    general_cache: Path | None,
    expert: Path,
    config: PersonalizeConfig,
    weights: str | Path | None = None,
    log: bool = True,
    resume: bool = False,
    show_progress: bool = False,
) -> dict:
    """Trains dW and dP for `avatar`, then stores them with it (see the module notes). Returns a summary.
    general_cache: the training cache to replay 1:1 with the template, or None for the template alone.
    Ctrl-C (SIGINT) or SIGTERM writes a checkpoint and raises Interrupted; `resume` continues from it."""
    from lipstream.avatars.prepare import apply_channel_personalization, refresh_features
    from lipstream.progress import Progress

    profile = avatar.manifest.profile
    template = template_clip(avatar, config.hold_out_seconds)
    general = replay_clips(general_cache)
    replay = str(general_cache) if general else "none"
    trainer = Personalizer(profile, weights, expert, config)
    steps = max(1, round(config.epochs * template.frames / SYNC_FRAMES / config.batch))
    folder = avatar.path / PERSONAL_DIR
    folder.mkdir(exist_ok=True)
    history, checkpoint = folder / LOG, folder / CHECKPOINT
    done_before = 0.0
    if resume and (state := load_checkpoint(checkpoint, trainer.device)) is not None:
        if state["replay"] != replay:
            raise PersonalizeError(f"the checkpoint was made with replay {state['replay']}, not {replay}; start anew")
        made_with = state.get("delta_p", "full")  # checkpoints from before the option: every parameter
        if made_with != config.delta_p:
            raise PersonalizeError(f"the checkpoint was made with --delta-p {made_with}, not {config.delta_p}")
        trainer.model.load_state_dict(state["model"])
        trainer.g_opt.load_state_dict(state["g_opt"])
        trainer.step, done_before = state["step"], state["seconds"]
    else:
        history.unlink(missing_ok=True)
    started = last_save = time.monotonic()
    window: list[dict[str, float]] = []
    progress = Progress("personalize", steps, unit="steps", enabled=show_progress, done=trainer.step)
    with StopRequest() as stop:
        for batch in _batches(template, general, config, steps, trainer.step):
            window.append(trainer.train_step(batch))
            progress.step()
            if trainer.step % 25 == 0 or trainer.step == steps:
                line = {"step": trainer.step, "seconds": round(done_before + time.monotonic() - started, 1)}
                line |= {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                window.clear()
                with history.open("a") as handle:
                    handle.write(json.dumps(line) + "\n")
                if log:
                    print(json.dumps(line), flush=True)
            if stop.requested or time.monotonic() - last_save > CHECKPOINT_SECONDS:
                _save(trainer, checkpoint, done_before + time.monotonic() - started, replay)
                last_save = time.monotonic()
            if stop.requested and trainer.step < steps:
                progress.close()
                raise Interrupted(trainer.step, steps, checkpoint)
    progress.close()
    train_seconds = done_before + time.monotonic() - started
    plot_curves(history, folder / "personalize_curves.png")
    if config.delta_p == "channels":  # served by the general model, dP a per-sample input
        path = folder / f"{profile}-channels.pt"
        delta_p = channel_shift_of(trainer.model.generator, trainer.general)
        ChannelPersonalization(trainer.model.delta_w.state_dict(), delta_p, trainer.base_id).save(path)
    else:  # a model of its own
        path = folder / f"{profile}.pt"
        torch.save({k: v.detach().cpu().half() for k, v in trainer.model.state_dict().items()}, path)
    summary = {
        "base_model_id": trainer.base_id,
        "weights": f"{PERSONAL_DIR}/{path.name}",
        "personal_bytes": path.stat().st_size,
        "template_frames": template.frames,
        "held_out_frames": avatar.frame_count - template.frames,
        "epochs": config.epochs,
        "steps": steps,
        "batch": f"{config.batch} template"
        + (f" + {config.batch} general" if general else "")
        + f" samples of {SYNC_FRAMES} frames",
        "replay": replay,
        "delta_p": config.delta_p,
        "delta_p_values": sum(p.numel() for p in trainer.model.generator.parameters() if p.requires_grad),
        "lr": config.learning_rate,
        "lambda_p": config.lambda_p,
        "lambda_motion": config.lambda_motion,
        "train_seconds": round(train_seconds, 1),
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
    }
    held_out = score_held_out(avatar, template.frames, trainer.model.eval(), load_stylesync(profile, weights)[0])
    if held_out is not None:
        summary["held_out"] = held_out
    extra = {"personalized": summary}
    checkpoint.unlink(missing_ok=True)  # before the manifest lists the avatar's files
    if config.delta_p == "channels":  # from the file: the avatar gets the stored fp16 values, as any reuse would
        refreshed = apply_channel_personalization(
            avatar.path, ChannelPersonalization.load(path, trainer.model.cfg), extra
        )
    else:
        refreshed = refresh_features(avatar.path, path, extra, face_encoder_changed=False)  # E_face stays frozen
    summary["model_id"] = refreshed.model_id
    summary["total_seconds"] = round(done_before + time.monotonic() - started, 1)
    return summary


def score_held_out(
    avatar: Avatar, template_frames: int, personal: torch.nn.Module, general: torch.nn.Module
) -> dict | None:
    """The template's held-out tail (frames it did not train on) rendered from its own audio by the
    personalised model, the general one and the static reference mouth, scored against the real
    frames: lower-face PSNR / SSIM, lip landmark distance and lip-audio r. None when less than 1 s
    was held out."""
    from .evaluate import MouthLandmarks, lip_audio, psnr_ssim_lmd, render_clip

    held = avatar.frame_count - template_frames
    if held < 25:
        return None
    whole = template_clip(avatar)
    tail = Clip(avatar.path, whole.meta | {"frames": held})
    tail.__dict__["crops"] = whole.crops[template_frames : template_frames + held]
    tail.__dict__["mel"] = whole.mel[:, template_frames * 16 // 5 :]  # template_frames is a multiple of 5
    reference = np.asarray(whole.crops[avatar.manifest.reference_frame])
    mouths, rows = MouthLandmarks(), personal.cfg.region_rows
    truth = np.asarray(tail.crops)
    scores: dict = {"seconds": held / 25}
    for name, system, model in (
        ("personalized", "model", personal),
        ("general", "model", general),
        ("static", "static", None),
    ):
        rendered = render_clip(system, tail, reference, model)
        measured = lip_audio(rendered, tail.mel, mouths)
        scores[name] = psnr_ssim_lmd(rendered, truth, rows, mouths) | {"lip_audio_r": measured[0] if measured else None}
    return scores
