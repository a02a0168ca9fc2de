"""`lipstream train generator`: the StyleSync generator, general model (StyleSync §3.2).

Objective per step, on B samples of five consecutive frames (Eq. 5):

    L_g = L_adv + lambda_r * (L1 + L_perceptual) + lambda_s * L_sync

- L1 on the generated region, lambda_r = 10 (the paper's value; all other weights 1);
- the perceptual term is 1 - MS-SSIM (no pretrained VGG exists offline; `--perceptual none` for the
  ablation);
- L_adv: StyleGAN2's non-saturating loss, the discriminator regularised by lazy R1; it joins after
  `gan_from_step` so that the discriminator does not start against noise, and sees one generated
  frame in `adv_stride` (it would otherwise cost twice the generator's step on this CPU);
- L_sync: the frozen training expert (seed 0) on the five generated frames composited into their
  faces, against the frames' 0.2 s of audio;
- optional (`lambda_mouth_adv`, `lambda_fm`): a patch discriminator on the lips' box of every generated
  frame, and feature matching in its layers against the real frame's lips (pix2pixHD's perceptual term,
  computed with a network trained here instead of a pretrained VGG).

The personalisation head dW stays at zero here (it is trained by `lipstream personalize`).
Resumable: a checkpoint (networks, optimisers, step) every few minutes and at the end of a chunk;
`--resume` continues. Logs: log.jsonl, loss_curves.png, samples/step-N.png, validation on GRID `val`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from lipstream.models.config import get_profile
from lipstream.models.discriminator import Discriminator, MouthDiscriminator, mouth_crop
from lipstream.models.stylesync import StyleSync
from lipstream.models.syncnet import SyncNet
from lipstream.models.weights import INIT_SEED
from lipstream.progress import Progress

from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import SYNC_FRAMES, GeneratorTrainConfig
from .evaluate import MouthLandmarks, render_clip, score
from .loaders import GeneratorSamples, load_clips
from .losses import expert_sync_loss, ms_ssim
from .stopping import StopRequest


def load_expert(path: str | Path, device: torch.device) -> SyncNet:
    net = SyncNet()
    net.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})
    return net.to(device).eval().requires_grad_(False)


class GeneratorTrainer:
    """The networks, optimisers and one training step; `run` is the resumable loop around them."""

    mouth_disc: MouthDiscriminator | None = None  # the lips' discriminator, when its loss is on

    def __init__(self, cache: Path, out: Path, config: GeneratorTrainConfig, resume: bool = False) -> None:
        self.cache, self.out, self.config = cache, out, config
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cfg = get_profile(config.profile)
        torch.manual_seed(INIT_SEED)
        self.model = StyleSync(cfg).to(self.device)
        if config.init and not resume:
            state = torch.load(config.init, map_location="cpu", weights_only=True)
            self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.model.delta_w.requires_grad_(False)
        if config.trainable == "audio":
            self.model.face_encoder.requires_grad_(False)
            self.model.generator.requires_grad_(False)
        elif config.trainable != "all":
            raise ValueError(f"trainable is 'all' or 'audio', not {config.trainable!r}")
        self.disc = Discriminator(cfg).to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.g_opt = torch.optim.Adam(trainable, lr=config.lr, betas=(0.5, 0.99))
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=config.d_lr, betas=(0.5, 0.99))
        self.mouth_disc = MouthDiscriminator().to(self.device) if config.lambda_mouth_adv > 0 else None
        if self.mouth_disc is not None:
            self.mouth_opt = torch.optim.Adam(self.mouth_disc.parameters(), lr=config.d_lr, betas=(0.5, 0.99))
        self.expert = load_expert(config.expert, self.device) if config.expert else None
        self.step = 0
        out.mkdir(parents=True, exist_ok=True)
        if resume and (state := load_checkpoint(out / CHECKPOINT, self.device)) is not None:
            self.model.load_state_dict(state["model"])
            self.disc.load_state_dict(state["discriminator"])
            self.g_opt.load_state_dict(state["g_opt"])
            self.d_opt.load_state_dict(state["d_opt"])
            if self.mouth_disc is not None and "mouth_discriminator" in state:
                self.mouth_disc.load_state_dict(state["mouth_discriminator"])
                self.mouth_opt.load_state_dict(state["mouth_opt"])
            self.step = state["step"]
        self.rows = cfg.region_rows

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "discriminator": self.disc.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "step": self.step,
            "config": asdict(self.config),
        }
        if self.mouth_disc is not None:
            state |= {"mouth_discriminator": self.mouth_disc.state_dict(), "mouth_opt": self.mouth_opt.state_dict()}
        save_checkpoint(state, self.out / CHECKPOINT)

    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(generated region, real region, targets) with the five frames flattened into the batch."""
        targets = batch["targets"].flatten(0, 1)  # [B*5, 3, S, S]
        mels = batch["mels"].flatten(0, 1)  # [B*5, 1, 80, 16]
        reference = batch["reference"].repeat_interleave(SYNC_FRAMES, dim=0)
        mask = batch["mask"].repeat_interleave(SYNC_FRAMES, dim=0)
        fake = self.model(mels, targets, reference, mask)  # [B*5, 3, rows, S]
        return fake, targets[..., -self.rows :, :], targets

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        batch = {k: v.to(self.device) for k, v in batch.items()}
        use_gan = self.step >= c.gan_from_step
        fake, real, targets = self.generate(batch)
        losses: dict[str, torch.Tensor] = {"l1": (fake - real).abs().mean()}
        total = c.lambda_rec * losses["l1"]
        if c.perceptual == "ms-ssim":
            losses["ms_ssim"] = ms_ssim(fake, real).mean()
            total = total + c.lambda_perceptual * (1 - losses["ms_ssim"])
        if self.expert is not None and self.step >= c.sync_from_step:
            faces = torch.cat([targets[..., : -self.rows, :], fake], dim=-2)
            faces = faces.unflatten(0, (-1, SYNC_FRAMES))  # [B, 5, 3, S, S]
            losses["sync"] = expert_sync_loss(self.expert, faces, batch["sync_mel"])
            total = total + c.lambda_sync * losses["sync"]
        if extra := self.penalties():
            losses |= extra
            total = total + extra["penalty"]
        if use_gan:
            self.disc.requires_grad_(False)
            losses["g_adv"] = F.softplus(-self.disc(fake[:: c.adv_stride])).mean()
            total = total + c.lambda_adv * losses["g_adv"]
        use_mouth = use_gan and self.mouth_disc is not None
        if use_mouth:
            mouths = (mouth_crop(fake, self.model.cfg), mouth_crop(real, self.model.cfg))
            mouth_terms = self._mouth_generator_terms(*mouths)
            losses |= mouth_terms
            total = total + c.lambda_mouth_adv * mouth_terms["g_mouth"] + c.lambda_fm * mouth_terms.get("fm", 0.0)
        self.g_opt.zero_grad(set_to_none=True)
        total.backward()
        self.g_opt.step()
        if use_gan:
            losses |= self._discriminator_step(
                self.disc, self.d_opt, fake[:: c.adv_stride].detach(), real[:: c.adv_stride]
            )
        if use_mouth:
            mouth_losses = self._discriminator_step(self.mouth_disc, self.mouth_opt, mouths[0].detach(), mouths[1])
            losses |= {f"{k}_mouth": v for k, v in mouth_losses.items()}
        self.step += 1
        return {k: v.item() for k, v in losses.items()} | {"total": total.item()}

    def penalties(self) -> dict[str, torch.Tensor]:
        """Extra terms of the objective ("penalty" joins the total); none for the general model."""
        return {}

    def _mouth_generator_terms(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The lips' adversarial term and, with lambda_fm, feature matching against the real lips."""
        self.mouth_disc.requires_grad_(False)
        logits, fake_features = self.mouth_disc(fake)
        terms = {"g_mouth": F.softplus(-logits).mean()}
        if self.config.lambda_fm > 0:
            with torch.no_grad():
                _, real_features = self.mouth_disc(real)
            distances = [(f - r).abs().mean() for f, r in zip(fake_features, real_features, strict=True)]
            terms["fm"] = torch.stack(distances).mean()
        return terms

    def _discriminator_step(
        self, disc: torch.nn.Module, opt: torch.optim.Optimizer, fake: torch.Tensor, real: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        c = self.config
        return discriminator_step(disc, opt, fake, real, self.step % c.r1_every == 0, c.r1_gamma * c.r1_every)

    @torch.no_grad()
    def write_samples(self, batch: dict[str, torch.Tensor], path: Path) -> None:
        """One row per sample: reference | masked target | generated | ground truth (first frame)."""
        self.model.eval()
        fake, _, targets = self.generate({k: v.to(self.device) for k, v in batch.items()})
        self.model.train()
        first = slice(None, None, SYNC_FRAMES)
        generated = targets[first].clone()
        generated[..., -self.rows :, :] = fake[first].clamp(-1, 1)
        masked = targets[first] * (1 - batch["mask"].to(self.device))
        columns = [batch["reference"].to(self.device), masked, generated, targets[first]]
        grid = torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)  # [3, B*S, 4*S]
        image = ((grid.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def validate(self, clips: list, mouths: MouthLandmarks) -> dict[str, float]:
        """PSNR / SSIM / LMD of the lower face on held-out clips, reference from a different clip."""
        self.model.eval()
        scores = []
        for index, clip in enumerate(clips):
            other = clips[(index + 1) % len(clips)]
            rendered = render_clip("model", clip, np.asarray(other.crops[other.frames // 2]), self.model)
            scores.append(score(rendered, np.asarray(clip.crops), self.rows, mouths))
        self.model.train()
        return {f"val_{k}": float(np.mean([s[k] for s in scores if s[k] is not None] or [np.nan])) for k in scores[0]}

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        c = self.config
        clips = load_clips(self.cache, "train")
        voice = (c.voice_factor, c.voice_level) if c.voice_factor > 1.0 or c.voice_level > 0.0 else None
        data = GeneratorSamples(
            clips,
            c.steps * c.batch,
            seed=c.seed,
            grid_share=c.grid_share,
            augment=True,
            colour_cast=c.colour_cast,
            voice=voice,
        )
        loader = DataLoader(Subset(data, range(self.step * c.batch, len(data))), batch_size=c.batch, drop_last=True)
        return iter(loader)

    def run(self, log: bool = True) -> dict:
        c = self.config
        val_clips = load_clips(self.cache, "val", {"grid_s1"})[: c.validate_clips]
        fixed = next(iter(DataLoader(GeneratorSamples(val_clips or load_clips(self.cache, "train"), 4), batch_size=4)))
        mouths = MouthLandmarks() if val_clips else None
        self.model.train()

        def validation() -> dict:
            return self.validate(val_clips, mouths) if self.step % c.validate_every == 0 and val_clips else {}

        return train_chunk(self, self.batches(), fixed, log, validation, lambda: self.step % c.validate_every == 0)


def train_chunk(
    trainer: object,
    batches: Iterable[dict[str, torch.Tensor]],
    fixed: dict[str, torch.Tensor],
    log: bool = True,
    extra: Callable[[], dict] = dict,
    flush_now: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
) -> dict:
    """The resumable loop of a training job: `trainer.train_step` per batch, a line of mean losses in
    out/log.jsonl every 25 steps (or when `flush_now()`, with `extra()` joined), samples every
    `sample_every` steps, a checkpoint every `checkpoint_minutes`, until `steps`, the chunk's
    `max_minutes` or Ctrl-C; then the last line, a checkpoint and the loss curves. Returns the last line.
    `trainer` has config, out, step, train_step(batch), write_samples(batch, path) and save()."""
    c = trainer.config
    history = trainer.out / "log.jsonl"
    started = last_checkpoint = time.monotonic()
    window: list[dict[str, float]] = []
    entry: dict = {"step": trainer.step}

    def flush() -> dict:
        line = {"step": trainer.step, "seconds": round(time.monotonic() - started, 1)}
        keys = sorted({k for w in window for k in w})
        line |= {k: float(np.mean([w[k] for w in window if k in w])) for k in keys}
        window.clear()
        line |= extra()
        with history.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        if log:
            print(json.dumps(line), flush=True)
        return line

    with StopRequest() as stop:
        for batch in batches:
            window.append(trainer.train_step(batch))
            if progress is not None:
                progress.step()
            if trainer.step % 25 == 0 or flush_now():
                entry = flush()
            if trainer.step % c.sample_every == 0:
                trainer.write_samples(fixed, trainer.out / "samples" / f"step-{trainer.step:07d}.png")
            if time.monotonic() - last_checkpoint > 60 * c.checkpoint_minutes:
                trainer.save()
                plot_curves(history, trainer.out / "loss_curves.png")
                last_checkpoint = time.monotonic()
            if stop.requested or trainer.step >= c.steps or time.monotonic() - started > 60 * c.max_minutes:
                break
    if window:
        entry = flush()
    trainer.save()
    plot_curves(history, trainer.out / "loss_curves.png")
    return entry


def discriminator_step(
    disc: torch.nn.Module,
    opt: torch.optim.Optimizer,
    fake: torch.Tensor,
    real: torch.Tensor,
    with_r1: bool,
    r1_weight: float,
) -> dict[str, torch.Tensor]:
    """One step of a discriminator (logits alone, or logits and features): the non-saturating loss, and
    with `with_r1` the R1 penalty on the real input times `r1_weight` (gamma times the interval: lazy R1)."""

    def logits(image: torch.Tensor) -> torch.Tensor:
        out = disc(image)
        return out[0] if isinstance(out, tuple) else out

    disc.requires_grad_(True)
    d_loss = F.softplus(logits(fake)).mean() + F.softplus(-logits(real)).mean()
    out = {"d": d_loss.detach()}
    if with_r1:
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(logits(real).sum(), real, create_graph=True)
        r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
        d_loss = d_loss + r1_weight / 2 * r1
        out["r1"] = r1.detach()
    opt.zero_grad(set_to_none=True)
    d_loss.backward()
    opt.step()
    return out


def plot_curves(history: Path, path: Path) -> None:
    """One panel per logged quantity against the step."""
    if not history.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    keys = sorted({k for e in entries for k in e} - {"step", "seconds"})
    if not keys:
        return
    columns = 3
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(e["step"], e[key]) for e in entries if key in e]
        ax.plot(*zip(*points, strict=True), marker="." if key.startswith("val_") else None)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def export_generator(checkpoint: Path, destination: Path) -> Path:
    """The StyleSync networks alone, fp16 (what `models/weights/<profile>.pt` holds)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in state.items()}, destination)
    return destination
