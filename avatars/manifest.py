"""An avatar's manifest.json, typed: what the code reads of it is a checked field, so a missing or
mistyped entry is refused where the avatar is loaded, with its name, and never found later as a
KeyError on the hot path. What is written only for people and reports (when and how it was made,
crop jitter, personalisation results) travels unchanged in `extra`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def _get(data: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if key not in data:
        raise ValueError(f"{where}{key} is missing")
    value = data[key]
    # bool is an int in Python: a count must not be True
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{where}{key} should be {' or '.join(k.__name__ for k in kinds)}, not {value!r}")
    return value


def _object(cls: type, data: Any, where: str, kinds: dict[str, type | tuple[type, ...]]) -> Any:
    """An instance of `cls` from the JSON object `data`, each field checked against its kinds."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} should be an object, not {data!r}")
    return cls(**{key: _get(data, key, kind, f"{where}.") for key, kind in kinds.items()})


@dataclass(frozen=True)
class Source:
    """The video or photo the avatar was prepared from."""

    path: str
    kind: str  # "video" or "image"
    width: int
    height: int
    fps: float
    has_audio: bool

    @classmethod
    def from_json(cls, data: Any) -> Source:
        kinds = {"path": str, "kind": str, "width": int, "height": int, "fps": (int, float), "has_audio": bool}
        return _object(cls, data, "source", kinds)


@dataclass(frozen=True)
class Audio:
    """The template's own audio beside the frames."""

    file: str
    sample_rate: int
    samples: int

    @classmethod
    def from_json(cls, data: Any) -> Audio:
        return _object(cls, data, "audio", {"file": str, "sample_rate": int, "samples": int})


_TYPED = (
    "format_version",
    "model_id",
    "profile",
    "mask",
    "fps",
    "frame_size",
    "crop_size",
    "style_layers",
    "frame_count",
    "reference_frame",
    "source",
    "audio",
    "files",
    "weights",
)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model_id: str  # the model whose face encoder made the cached features
    profile: str  # rt or hq
    mask: str  # the lower-face mask: ushape or pose
    fps: int
    frame_size: tuple[int, int]  # (width, height) of the template frames
    crop_size: int
    style_layers: int
    frame_count: int
    reference_frame: int  # the frame whose crop is the generator's reference
    source: Source
    audio: Audio
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 of every other file
    weights: str | None = None  # a personalised avatar's own model, relative to its folder
    extra: dict = field(default_factory=dict)  # the rest, as written

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Raises ValueError naming the first entry that is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("the manifest is not a JSON object")
        size = _get(data, "frame_size", list)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ValueError(f"frame_size should be [width, height] in pixels, not {size!r}")
        files = _get(data, "files", dict) if "files" in data else {}
        weights = data.get("weights")
        if weights is not None and not isinstance(weights, str):
            raise ValueError(f"weights should be a path relative to the avatar, not {weights!r}")
        manifest = cls(
            format_version=_get(data, "format_version", int),
            model_id=_get(data, "model_id", str),
            profile=_get(data, "profile", str),
            mask=_get(data, "mask", str),
            fps=_get(data, "fps", int),
            frame_size=(size[0], size[1]),
            crop_size=_get(data, "crop_size", int),
            style_layers=_get(data, "style_layers", int),
            frame_count=_get(data, "frame_count", int),
            reference_frame=_get(data, "reference_frame", int),
            source=Source.from_json(_get(data, "source", dict)),
            audio=Audio.from_json(_get(data, "audio", dict)),
            files={str(k): str(v) for k, v in files.items()},
            weights=weights,
            extra={k: v for k, v in data.items() if k not in _TYPED},
        )
        if not 0 <= manifest.reference_frame < manifest.frame_count:
            raise ValueError(
                f"reference_frame {manifest.reference_frame} is not one of the {manifest.frame_count} frames"
            )
        return manifest

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["frame_size"] = list(self.frame_size)
        data["source"] = dataclasses.asdict(self.source)
        data["audio"] = dataclasses.asdict(self.audio)
        if self.weights is None:
            del data["weights"]
        return data | self.extra

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of an avatar folder; OSError or ValueError where it is missing or unusable."""
        return cls.from_json(json.loads((folder / MANIFEST).read_text()))

    def write(self, folder: Path) -> None:
        """Writes manifest.json in one step (a reader never sees half of it)."""
        partial = folder / f".{MANIFEST}.partial"
        partial.write_text(json.dumps(self.to_json(), indent=2))
        partial.replace(folder / MANIFEST)
