"""A training job's checkpoint: written whole or not at all, and read back to resume."""

from __future__ import annotations

from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"  # its name in a job's folder


def save_checkpoint(state: dict, path: Path) -> None:
    """`state` to a temporary file beside `path`, then renamed over it: a job stopped while writing keeps
    its previous checkpoint."""
    partial = path.with_name(path.name + ".tmp")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict | None:
    """The state saved at `path`, or None where there is none yet (a fresh run)."""
    return torch.load(path, map_location=device, weights_only=False) if path.is_file() else None
