"""`lipstream train syncnet`: the lip-sync expert, trained on in-sync vs shifted pairs (Wav2Lip's recipe).

The cosine similarity of the video and audio embeddings, mapped to (0, 1), is trained with binary
cross-entropy. Training is resumable: a checkpoint (model, optimiser, step, RNG) is written every few
minutes and at the end, and `--resume` continues from it. Validation follows the SyncNet paper: for
each GRID test clip, the offset in [-15, +15] frames that minimises the mean embedding distance, and
the confidence (median minus minimum of those distances).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lipstream.models.syncnet import SyncNet

from .loaders import SYNC_FRAMES, Clip, SyncPairs, load_clips, lower_half

CHECKPOINT = "checkpoint.pt"


@dataclass
class SyncTrainConfig:
    seed: int = 0
    steps: int = 20_000
    batch: int = 32
    lr: float = 1e-4
    checkpoint_minutes: float = 5.0
    validate_every: int = 1000
    max_minutes: float = 120.0  # one chunk; resume for more


def sync_loss(net: SyncNet, frames: torch.Tensor, mel: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    probability = ((net(frames, mel) + 1) / 2).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(probability, label)


@torch.inference_mode()
def validate(net: SyncNet, clips: list[Clip], device: torch.device, max_offset: int = 15) -> dict:
    """Offset search per clip: accuracy (best offset within +-1 of 0) and mean confidence."""
    net.eval()
    found, confidences = [], []
    for clip in clips:
        firsts = [f for f in range(clip.frames - SYNC_FRAMES + 1) if clip.has_sync_window(f)]
        if len(firsts) < 2 * max_offset + 5:
            continue
        video = torch.stack([lower_half(np.asarray(clip.crops[f : f + SYNC_FRAMES])) for f in firsts]).to(device)
        audio = torch.stack([torch.from_numpy(clip.sync_window(f).copy())[None] for f in firsts]).to(device)
        v, a = net.embed_video(video), net.embed_audio(audio)  # [K, D] each
        distances = []
        for offset in range(-max_offset, max_offset + 1):
            lo, hi = max(0, -offset), min(len(firsts), len(firsts) - offset)
            distances.append(float((v[lo:hi] - a[lo + offset : hi + offset]).norm(dim=1).mean()))
        distances_arr = np.array(distances)
        best = int(np.argmin(distances_arr)) - max_offset
        found.append(abs(best) <= 1)
        confidences.append(float(np.median(distances_arr) - distances_arr.min()))
    net.train()
    return {
        "clips": len(found),
        "offset_accuracy": float(np.mean(found)) if found else 0.0,
        "mean_confidence": float(np.mean(confidences)) if confidences else 0.0,
    }


def train_syncnet(cache: Path, out: Path, config: SyncTrainConfig, resume: bool = False, log: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    net = SyncNet().to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    step = 0
    if resume and (out / CHECKPOINT).is_file():
        state = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
    train = SyncPairs(load_clips(cache, "train"), length=config.steps * config.batch, seed=config.seed)
    test_clips = [c for c in load_clips(cache, "test") if c.meta["identity"] == "grid_s1"]
    loader = DataLoader(
        torch.utils.data.Subset(train, range(step * config.batch, len(train))),
        batch_size=config.batch,
        num_workers=0,
        drop_last=True,
    )
    started = last_checkpoint = time.monotonic()
    history = out / "log.jsonl"
    result: dict = {"step": step}

    def save() -> None:
        torch.save(
            {"model": net.state_dict(), "optimiser": optimiser.state_dict(), "step": step, "config": asdict(config)},
            out / (CHECKPOINT + ".tmp"),
        )
        (out / (CHECKPOINT + ".tmp")).replace(out / CHECKPOINT)

    for frames, mel, label in loader:
        loss = sync_loss(net, frames.to(device), mel.to(device), label.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        entry = {"step": step, "loss": loss.item(), "seconds": time.monotonic() - started}
        if step % config.validate_every == 0 and test_clips:
            entry |= {"val_" + k: v for k, v in validate(net, test_clips, device).items()}
        if step % 50 == 0 or "val_clips" in entry:
            with history.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            if log:
                print(json.dumps(entry), flush=True)
        if time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes:
            save()
            last_checkpoint = time.monotonic()
        result = entry
        if step >= config.steps or time.monotonic() - started > 60 * config.max_minutes:
            break
    save()
    return result


def export_expert(checkpoint: Path, destination: Path) -> Path:
    """The model alone, in fp16, small enough to commit."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    torch.save({k: v.half() for k, v in state.items()}, destination)
    return destination
