"""`lipstream train upsampler`: the region upsampler of the `hd` path (models/upsampler.py).

Data: a training cache of 256-px crops (`lipstream dataset build --crop-size 256`, same alignment as the
128-px crops; clips whose face is too small for 256 px are left out by the build). A sample is a frame
and a reference frame at least 1 s away in the same clip, every person equally likely.

The upsampler learns to turn a 128-px lower face, with the reference at 256 px, into the real lower
face at 256 px. Its input is mostly (`real_share`) the real region scaled down, then often blurred
(`blur_share`, sigma 0.3-1.5 px): input and target then show the same mouth, so what it learns is
detail that fits the structure it is given (on faces it never saw, the generator's mouth is blurrier
than a scaled-down real one). The rest of the time the frozen `rt` model renders the region at 128 px
from the frame's masked face, the reference and the frame's audio, as at run time, so that the
upsampler also sees the generator's own colours and artefacts; there the target's mouth may differ
from the generated one, which teaches caution, hence the small share.

Loss: L1 + (1 - MS-SSIM) + L1 of the Laplacians (edges where the real face has them), on the whole
region; with `lambda_adv`, from `adv_from_step`, a patch discriminator on the lips' box
(models/discriminator.py's MouthDiscriminator, non-saturating loss, lazy R1): the losses above
prefer a blur wherever the input leaves the detail uncertain, the discriminator does not.
Logged beside it: the same L1 for the bilinear enlargement of the same input, and the mouth's sharpness
(variance of the Laplacian in the lips' box) as a ratio to the real one, for both.
Resumable like the other jobs: checkpoint every few minutes and on Ctrl-C, `--resume` continues.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from lipstream.avatars.masks import ushape_mask
from lipstream.dsp import MelConfig, mel_windows
from lipstream.models.discriminator import MOUTH_BOX, MouthDiscriminator
from lipstream.models.upsampler import SCALE, RegionUpsampler, load_upsampler
from lipstream.models.weights import load_stylesync
from lipstream.progress import Progress

from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import UpsamplerTrainConfig
from .generator_train import discriminator_step, train_chunk
from .loaders import Clip, by_identity, load_clips, to_unit
from .losses import ms_ssim

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 Laplacian of [B, C, H, W] (valid region)."""
    kernel = LAPLACIAN.to(images).expand(images.shape[1], 1, 3, 3)
    return F.conv2d(images, kernel, groups=images.shape[1])


def mouth_box(region: torch.Tensor, face_size: int) -> torch.Tensor:
    """The lips' box of lower-half regions [B, 3, face_size / 2, face_size]."""
    top, bottom, left, right = (round(f * face_size) for f in MOUTH_BOX)
    return region[:, :, top - face_size // 2 : bottom - face_size // 2, left:right]


def sharpness(region: torch.Tensor, face_size: int) -> torch.Tensor:
    """Variance of the Laplacian of the lips' box in grey, per image. [B]"""
    grey = mouth_box(region, face_size).mean(dim=1, keepdim=True)
    return laplacian(grey).flatten(1).var(dim=1)


def shrink(crop: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


class UpsamplerSamples(Dataset):
    """A frame and a reference >= 1 s away: both at the cache's crop size and at half of it, the frame's
    mel window and the lower-face mask at the small size."""

    def __init__(
        self,
        clips: list[Clip],
        length: int,
        seed: int = 0,
        mel_cfg: MelConfig | None = None,
        real_share: float = 0.8,
        blur_share: float = 0.7,
    ) -> None:
        if not clips:
            raise ValueError(
                "no clips with audio in this cache; build one of 256-px crops first: "
                "lipstream dataset build --talking DIR --crop-size 256"
            )
        self.people, self.length, self.seed = by_identity(clips), length, seed
        self.real_share, self.blur_share = real_share, blur_share
        self.mel_cfg = mel_cfg or MelConfig()
        self.size = clips[0].crops.shape[1]
        self.mask = torch.from_numpy(ushape_mask(self.size // SCALE))[None]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clips = self.people[rng.integers(len(self.people))]
        clip = clips[rng.integers(len(clips))]
        frame = int(rng.integers(clip.frames))
        far = [f for f in range(clip.frames) if abs(f - frame) >= 25] or [0]
        reference = far[rng.integers(len(far))]
        target, ref = np.asarray(clip.crops[frame]), np.asarray(clip.crops[reference])
        if rng.random() < 0.5:
            target, ref = target[:, ::-1], ref[:, ::-1]
        gain, shift = rng.uniform(0.85, 1.15), rng.uniform(-0.08, 0.08)
        small = self.size // SCALE
        window = mel_windows(clip.mel, frame, 1, self.mel_cfg)[0]

        def unit(image: np.ndarray) -> torch.Tensor:
            return (to_unit(image) * gain + shift).clamp(-1, 1)

        return {
            "target": unit(target),  # [3, S, S]
            "reference": unit(ref),
            "target_small": unit(shrink(target, small)),  # [3, S/2, S/2]
            "reference_small": unit(shrink(ref, small)),
            "mel": torch.from_numpy(window)[None],  # [1, 80, 16]
            "mask": self.mask,
            "blur": torch.tensor(rng.uniform(0.3, 1.5) if rng.random() < self.blur_share else 0.0, dtype=torch.float32),
            "real_input": torch.tensor(rng.random() < self.real_share),
        }


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each image [B, C, H, W] blurred with its own sigma (0: unchanged), 5x5 separable kernel."""
    coords = torch.arange(5, dtype=images.dtype) - 2
    kernels = torch.exp(-(coords[None] ** 2) / (2 * sigmas.clamp(min=1e-3)[:, None] ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # [B, 5]
    out = []
    for image, kernel, sigma in zip(images, kernels, sigmas, strict=True):
        if sigma <= 0:
            out.append(image)
            continue
        c = image.shape[0]
        padded = F.pad(image[None], (2, 2, 2, 2), mode="replicate")
        rows = F.conv2d(padded, kernel.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
        out.append(F.conv2d(rows, kernel.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)[0])
    return torch.stack(out)


def sharp_clips(cache: Path, max_crop_scale: float) -> list[Clip]:
    """The cache's training clips whose crops are not enlarged more than `max_crop_scale` times."""
    clips = load_clips(cache, "train")
    sharp = [c for c in clips if c.meta.get("crop_scale", np.inf) <= max_crop_scale]
    if clips and not sharp:
        raise ValueError(
            f"none of the {len(clips)} training clips in {cache} holds faces at {max_crop_scale}x or less of their "
            "source size; build the cache from larger faces (lipstream dataset build --crop-size 256)"
        )
    return sharp


class UpsamplerTrainer:
    """The upsampler, its optimiser and one training step; `run` is the resumable loop, over the cache's
    sharp clips or over given samples (a personal fine-tune)."""

    def __init__(self, cache: Path | None, out: Path, config: UpsamplerTrainConfig, resume: bool = False) -> None:
        self.cache, self.out, self.config = cache, out, config
        torch.manual_seed(config.seed)
        # the frozen generator makes inputs only where real_share < 1 (not in a personal fine-tune)
        uses_generator = config.real_share < 1
        self.generator, self.generator_id = load_stylesync("rt", config.weights) if uses_generator else (None, None)
        self.net = RegionUpsampler(config.width, config.depth) if config.init is None else load_upsampler(config.init)
        self.net.requires_grad_(True)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr, betas=(0.9, 0.99))
        self.disc = MouthDiscriminator(config.disc_width) if config.lambda_adv > 0 else None
        if self.disc is not None:
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=config.lr, betas=(0.5, 0.99))
        self.step = 0
        out.mkdir(parents=True, exist_ok=True)
        if resume and (state := load_checkpoint(out / CHECKPOINT)) is not None:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            self.step = state["step"]
            if self.disc is not None and "disc" in state:  # else a fresh one joins a run trained without
                self.disc.load_state_dict(state["disc"])
                self.d_opt.load_state_dict(state["d_opt"])

    def save(self) -> None:
        state = {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step}
        if self.disc is not None:
            state |= {"disc": self.disc.state_dict(), "d_opt": self.d_opt.state_dict()}
        state |= {"config": asdict(self.config), "net_config": self.net.config(), "generator_id": self.generator_id}
        save_checkpoint(state, self.out / CHECKPOINT)

    @torch.no_grad()
    def inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The upsampler's input region per sample: the generator's, or the real one scaled down; blurred
        where the sample says. [B, 3, S/4, S/2]"""
        small = batch["target_small"]
        rows = small.shape[-2] // 2
        region = real = small[..., -rows:, :]
        if not batch["real_input"].all():
            generated = self.generator(batch["mel"], small, batch["reference_small"], batch["mask"]).clamp(-1, 1)
            region = torch.where(batch["real_input"][:, None, None, None], real, generated)
        return gaussian_blur(region, batch["blur"])

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        size = batch["target"].shape[-1]
        region = self.inputs(batch)
        target = batch["target"][..., size // 2 :, :]
        reference = batch["reference"][..., size // 2 :, :]
        out = self.net(region, self.net.encode_reference(reference))
        l1 = (out - target).abs().mean()
        structure = 1 - ms_ssim(out, target).mean()
        edges = (laplacian(out) - laplacian(target)).abs().mean()
        total = c.lambda_l1 * l1 + c.lambda_ms_ssim * structure + c.lambda_laplacian * edges
        extra: dict[str, torch.Tensor] = {}
        adversarial = self.disc is not None and self.step >= c.adv_from_step
        if adversarial:
            self.disc.requires_grad_(False)
            extra["g_adv"] = F.softplus(-self.disc(mouth_box(out, size))[0]).mean()
            total = total + c.lambda_adv * extra["g_adv"]
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if adversarial:
            fake, real = mouth_box(out.detach(), size), mouth_box(target, size)
            extra |= discriminator_step(self.disc, self.d_opt, fake, real, self.step % 16 == 0, c.r1_gamma * 16)
        self.step += 1
        with torch.no_grad():
            bilinear = F.interpolate(region, scale_factor=SCALE, mode="bilinear", align_corners=False)
            real_sharpness = sharpness(target, size).clamp(min=1e-8)
            return {k: v.item() for k, v in extra.items()} | {
                "total": total.item(),
                "l1": l1.item(),
                "ms_ssim": 1 - structure.item(),
                "laplacian": edges.item(),
                "l1_bilinear": (bilinear - target).abs().mean().item(),
                "sharpness_ratio": (sharpness(out, size) / real_sharpness).median().item(),
                "sharpness_ratio_bilinear": (sharpness(bilinear, size) / real_sharpness).median().item(),
            }

    @torch.no_grad()
    def write_samples(self, batch: dict[str, torch.Tensor], path: Path) -> None:
        """One row per sample: bilinear input | upsampled | real (lower face at 256 px)."""
        size = batch["target"].shape[-1]
        region = self.inputs(batch)
        out = self.net(region, self.net.encode_reference(batch["reference"][..., size // 2 :, :]))
        bilinear = F.interpolate(region, scale_factor=SCALE, mode="bilinear", align_corners=False)
        columns = [bilinear, out.clamp(-1, 1), batch["target"][..., size // 2 :, :]]
        grid = torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)
        image = ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    def run(self, log: bool = True, clips: list[Clip] | None = None, progress: Progress | None = None) -> dict:
        """Trains to `config.steps` (or the chunk's minutes, or Ctrl-C), on `clips` or the cache's."""
        c = self.config
        clips = clips if clips is not None else sharp_clips(self.cache, c.max_crop_scale)
        data = UpsamplerSamples(clips, c.steps * c.batch, c.seed, real_share=c.real_share, blur_share=c.blur_share)
        # the samples shown are the generator's where it makes any of the inputs
        fixed_data = UpsamplerSamples(clips, 4, c.seed + 1, real_share=0.0 if c.real_share < 1 else 1.0)
        fixed = next(iter(DataLoader(fixed_data, batch_size=4)))
        loader = DataLoader(Subset(data, range(self.step * c.batch, len(data))), batch_size=c.batch, drop_last=True)
        self.net.train()
        return train_chunk(self, loader, fixed, log, progress=progress)


def export_upsampler(checkpoint: Path, destination: Path) -> Path:
    """The upsampler alone, fp16, with its sizes (what `models/weights/upsampler.pt` holds)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    sizes = state.get("net_config") or {k: state["config"][k] for k in ("width", "depth")}  # the network's own
    saved = {
        "config": sizes,
        "state": {k: v.half() for k, v in state["net"].items()},
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, destination)
    return destination
