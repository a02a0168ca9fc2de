"""Loading a profile's weights, and the model id that ties cached avatar features to them.

Trained weights are looked up in `models/weights/<profile>.pt`, shipped with the package (`rt.pt`, with
its model card `rt.md`), unless a file is given. A profile without trained weights (`hq`: nothing
trains it on this CPU) keeps the networks' seeded initialisation: the whole pipeline runs, and the id
says "init" so nothing mistakes it for a trained model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .config import get_profile
from .stylesync import StyleSync

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INIT_SEED = 0


class WeightsError(RuntimeError):
    """A weights file that cannot be used for the requested profile."""


def state_checksum(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order (independent of how they were saved)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_weights(profile: str) -> Path | None:
    path = WEIGHTS_DIR / f"{profile}.pt"
    return path if path.is_file() else None


def default_upsampler() -> Path | None:
    """The hd path's region upsampler (models/upsampler.py): the file $LIPSTREAM_UPSAMPLER names (one that
    `lipstream train export upsampler` wrote), else the shipped one, if either exists."""
    given = os.environ.get("LIPSTREAM_UPSAMPLER")
    path = Path(given) if given else WEIGHTS_DIR / "upsampler.pt"
    return path if path.is_file() else None


def load_stylesync(profile: str, weights: str | Path | None = None) -> tuple[StyleSync, str]:
    """Returns (model in eval mode, model id "<profile>-<trained|init>-<checksum[:16]>")."""
    cfg = get_profile(profile)
    path = Path(weights) if weights is not None else default_weights(cfg.name)
    torch.manual_seed(INIT_SEED)
    model = StyleSync(cfg)
    if path is not None:
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist; pass a file written by `lipstream train`")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as err:
            raise WeightsError(f"{path} does not hold {cfg.name} StyleSync weights: {err}") from err
    model.eval().requires_grad_(False)
    kind = "trained" if path is not None else "init"
    return model, f"{cfg.name}-{kind}-{state_checksum(model)[:16]}"
