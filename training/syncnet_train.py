"""`lipstream train syncnet`: the lip-sync expert, trained on in-sync vs shifted pairs.

Wav2Lip trains its expert with binary cross-entropy on single pairs; on this CPU that loss sat at
chance (0.69) for the first 500 steps. Here every batch is a contrastive problem instead: each clip
window's video must pick its own audio among the batch's other windows (other clips) and the shifted
windows of the same clips (same voice and face, wrong time: the hard negatives), and each audio window
must pick its video (InfoNCE both ways, fixed temperature). Training is resumable: a checkpoint
(model, optimiser, step) is written every few minutes and at the end, and `--resume` continues from
it (the sample order depends only on the seed and the step). Validation follows the SyncNet paper: for
each GRID test clip, the offset in [-15, +15] frames that minimises the mean embedding distance, and
the confidence (median minus minimum of those distances).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lipstream.models.syncnet import SyncNet

from .checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import SYNC_FRAMES, SyncTrainConfig
from .loaders import Clip, SyncPairs, load_clips, to_unit
from .stopping import StopRequest


def contrastive_loss(
    net: SyncNet, faces: torch.Tensor, in_sync: torch.Tensor, off_sync: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, float]:
    """faces [B, 5, 3, S, S]; mels [B, 1, 80, 16]. Returns the loss and the batch's top-1 accuracy."""
    v = net.embed_video(net.visual_input(faces))  # [B, D]
    a = net.embed_audio(torch.cat([in_sync, off_sync]))  # [2B, D]
    logits = v @ a.T / temperature  # [B, 2B]: column i is row i's own audio
    target = torch.arange(len(v), device=v.device)
    loss = F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(v)].T, target)
    return loss / 2, float((logits.argmax(dim=1) == target).float().mean())


@torch.inference_mode()
def validate(net: SyncNet, clips: list[Clip], device: torch.device, max_offset: int = 15) -> dict:
    """Offset search per clip: accuracy (best offset within +-1 of 0) and mean confidence."""
    net.eval()
    found, confidences = [], []
    for clip in clips:
        firsts = [f for f in range(clip.frames - SYNC_FRAMES + 1) if clip.has_sync_window(f)]
        if len(firsts) < 2 * max_offset + 5:
            continue
        faces = torch.stack([to_unit(np.asarray(clip.crops[f : f + SYNC_FRAMES])) for f in firsts])
        video = net.visual_input(faces.to(device))
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
    if resume and (state := load_checkpoint(out / CHECKPOINT, device)) is not None:
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
    window: list[tuple[float, float]] = []

    def save() -> None:
        state = {"model": net.state_dict(), "optimiser": optimiser.state_dict(), "step": step, "config": asdict(config)}
        save_checkpoint(state, out / CHECKPOINT)

    with StopRequest() as stop:
        for faces, in_sync, off_sync in loader:
            loss, accuracy = contrastive_loss(
                net, faces.to(device), in_sync.to(device), off_sync.to(device), config.temperature
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            window.append((loss.item(), accuracy))
            entry = {
                "step": step,
                "loss": float(np.mean([w[0] for w in window])),  # mean over the steps since the last line
                "accuracy": float(np.mean([w[1] for w in window])),
                "seconds": time.monotonic() - started,
            }
            if step % config.validate_every == 0 and test_clips:
                entry |= {"val_" + k: v for k, v in validate(net, test_clips, device).items()}
            if step % 50 == 0 or "val_clips" in entry:
                window.clear()
                with history.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
                if log:
                    print(json.dumps(entry), flush=True)
            if time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes:
                save()
                last_checkpoint = time.monotonic()
            result = entry
            if stop.requested or step >= config.steps or time.monotonic() - started > 60 * config.max_minutes:
                break
    save()
    return result


def export_expert(checkpoint: Path, destination: Path) -> Path:
    """The model alone, in fp16, small enough to commit."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    torch.save({k: v.half() for k, v in state.items()}, destination)
    return destination
