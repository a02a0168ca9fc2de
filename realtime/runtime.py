"""Everything a process needs to run an avatar: the avatar's assets, an engine for its model, and a
factory for the shared scheduler. Built once by `serve` and `render`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipstream.avatars import Avatar
from lipstream.avatars.default import BUILT_IN, DEFAULT_NAME, built_in_avatar
from lipstream.avatars.errors import AvatarCacheError
from lipstream.avatars.manifest import MANIFEST, Manifest
from lipstream.dsp.voice import VoiceReference
from lipstream.engines.base import Engine, EngineError
from lipstream.engines.select import check_model, open_engine
from lipstream.export.onnx_export import ExportError, export_onnx
from lipstream.models.upsampler import UpsamplerWeightsError
from lipstream.models.weights import load_stylesync
from lipstream.paths import avatars_dir, check_name

from .capacity import TickModel
from .clock import Clock
from .compositor import AvatarAssets
from .metrics import Metrics
from .scheduler import FrameScheduler, frame_feed
from .settings import ENGINE_VARIANT, KEEP_TEMPLATE, MOTION_GAIN, VOICE_WARP, voice_reference
from .tracks import video_frame
from .upsampling import Upsampler
from .video_encoder import AvatarVp8Encoder

logger = logging.getLogger("lipstream.realtime")
REST_BATCH = 8  # frames per engine call when an avatar's rest regions are rendered


@dataclass
class Runtime:
    assets: AvatarAssets  # the avatar served by default
    engine: Engine
    metrics: Metrics = field(default_factory=Metrics)
    loaded: dict[str, AvatarAssets] = field(default_factory=dict)
    samples_dir: Path | None = None  # speech files the browser client may play through its connection
    style_smoothing: float = 0.0  # weight of the previous frame's styles (FrameScheduler); 0: off
    motion_gain: float = MOTION_GAIN  # how far the audio moves the styles (FrameScheduler); 1: as trained
    voice_warp: float | None = VOICE_WARP  # each session's formant warp (dsp/voice.py); None: by its pitch
    # the mean speech spectrum each session's voice is shifted to (dsp/voice.py's VoiceNorm); None: off
    voice_norm: VoiceReference | None = field(default_factory=voice_reference)
    upsampler: Upsampler | None = None  # a photo's hd path (models/upsampler.py), made on first use
    keep_template: bool = KEEP_TEMPLATE  # rest regions for every avatar loaded (compositor.rest_keep)

    def __post_init__(self) -> None:
        self.ready(self.assets)

    def ready(self, assets: AvatarAssets) -> AvatarAssets:
        """A newly loaded avatar's assets made ready to serve: the hd path, and its rest regions."""
        return self.with_rest(self.with_hd(assets))

    def with_rest(self, assets: AvatarAssets) -> AvatarAssets:
        """`assets` with the region the engine generates in silence for each frame its idle loop shows
        (speech is shown on those frames), so that compositing takes only what the audio changes from
        the model (compositor.rest_keep). Rendered once per loaded avatar, REST_BATCH frames a call."""
        if assets.rest or not self.keep_template:
            return assets
        started = time.perf_counter()
        indices = sorted({int(i) for i in assets.loop})
        mel = np.zeros(next(s.shape for s in self.engine.inputs if s.name == "mel"), np.float32)
        regions: dict[int, np.ndarray] = {}
        step = min(REST_BATCH, self.engine.max_batch)
        for start in range(0, len(indices), step):
            part = indices[start : start + step]
            silent = [0.0] * len(part)  # motion gain 0: the styles of silence, whatever the mel says
            feed = frame_feed([assets.features(i) for i in part], [mel] * len(part), [None] * len(part), 0.0, silent)
            regions.update(zip(part, self.engine.run(feed)["region"], strict=True))
        assets.attach_rest(regions)
        logger.info(
            "avatar %s: rest regions of %d frames rendered in %.1f s",
            assets.avatar.name,
            len(indices),
            time.perf_counter() - started,
        )
        return assets

    def with_hd(self, assets: AvatarAssets) -> AvatarAssets:
        """`assets` with the region upsampler attached where its avatar's hd path needs it and it can run
        (a video avatar's hd path needs nothing: its detail bank is loaded with it)."""
        if assets.hd_method != "upsampler" or assets.upsampler is not None:
            return assets
        try:
            self.upsampler = self.upsampler or Upsampler()
        except (ExportError, EngineError, UpsamplerWeightsError) as err:
            logger.warning("avatar %s: the hd path is off: %s", assets.avatar.name, err)
            return assets
        assets.attach_upsampler(self.upsampler)
        return assets

    def scheduler(self, clock: Clock) -> FrameScheduler:
        return FrameScheduler(
            self.engine, clock, self.metrics, style_smoothing=self.style_smoothing, motion_gain=self.motion_gain
        )

    def avatar_names(self) -> list[str]:
        """The avatar served by default, the built-in ones, then every prepared avatar made for the
        engine's model (personalised ones included, where the general model serves them)."""
        built = {f"{n}-{self.profile}" for n in BUILT_IN}
        names = [self.assets.avatar.name, *(n for n in BUILT_IN if f"{n}-{self.profile}" != self.assets.avatar.name)]
        folder = avatars_dir()
        if folder.is_dir():
            for manifest in sorted(folder.glob(f"*/{MANIFEST}")):
                try:
                    model_id = Manifest.read(manifest.parent).model_id
                except (OSError, ValueError):
                    continue  # not usable: Avatar.load says why to whoever picks it
                name = manifest.parent.name
                if model_id == self.engine.model_id and name not in names and name not in built:
                    names.append(name)
        return names

    @property
    def profile(self) -> str:
        return self.assets.avatar.manifest.profile

    def assets_for(self, name: str | None) -> AvatarAssets:
        """The assets of an avatar by name, loaded and verified on first use (blocking: call off the loop)."""
        served = self.assets.avatar.name
        if name is None or name == served or (name in BUILT_IN and f"{name}-{self.profile}" == served):
            return self.assets
        if name not in self.loaded and name in BUILT_IN:
            self.loaded[name] = self.ready(AvatarAssets(built_in_avatar(name, self.profile)))
        if name not in self.loaded:
            folder = avatars_dir() / check_name(name)
            if own_weights(str(folder)) is not None:
                raise AvatarCacheError(
                    f"avatar {name!r} is personalised and runs on its own model, not this server's; "
                    f"serve it with: lipstream serve --avatar {name}"
                )
            avatar = Avatar.load(folder, model_id=self.engine.model_id)
            self.loaded[name] = self.ready(AvatarAssets(avatar))
        return self.loaded[name]


def avatar_folder(name: str | None) -> Path | None:
    """An avatar's folder by name (in the avatar folder) or path; None for the built-in ones."""
    if name is None or name in BUILT_IN:
        return None
    path = Path(name)
    return path if path.is_dir() else avatars_dir() / check_name(name)


def own_weights(name: str | None) -> Path | None:
    """The weights an avatar was personalised to (`lipstream personalize`), if any."""
    folder = avatar_folder(name)
    try:
        relative = Manifest.read(folder).weights if folder else None
    except (OSError, ValueError):
        return None  # Avatar.load reports what is wrong with the folder
    return folder / relative if relative is not None else None


def load_avatar(name: str | None, profile: str = "rt", model_id: str | None = None) -> Avatar:
    """An avatar by name (in the avatar folder) or path; None means the default; the built-in ones are
    prepared on first use."""
    folder = avatar_folder(name)
    return built_in_avatar(name or DEFAULT_NAME, profile) if folder is None else Avatar.load(folder, model_id=model_id)


def warm_up(engine: Engine) -> None:
    """First calls of a runtime allocate and tune; do them now, not in the first real tick."""
    for batch in (1, 2):
        engine.run({s.name: np.zeros((batch, *s.shape), np.float32) for s in engine.inputs})


def _median_seconds(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def time_tick(runtime: Runtime, max_batch: int, runs: int = 3) -> TickModel:
    """Times this host's tick for admission (capacity.TickModel): the engine at batch sizes 1..max_batch,
    compositing a generated frame onto the default avatar (through the upsampler where it has the hd
    path), and VP8-encoding one of its frames, as a viewer's sender does."""
    engine, assets = runtime.engine, runtime.assets
    inference = {}
    for batch in range(1, min(max_batch, engine.max_batch) + 1):
        feed = {spec.name: np.zeros((batch, *spec.shape), np.float32) for spec in engine.inputs}
        inference[batch] = _median_seconds(lambda feed=feed: engine.run(feed), runs)
    region = np.zeros(next(spec.shape for spec in engine.outputs if spec.name == "region"), np.float32)

    def upsampled() -> np.ndarray:
        return assets.upsampler.run(region[None], assets.hd_features[None])[0]

    def composite() -> None:
        assets.composite(0, region if assets.upsampler is None else upsampled())

    composite_seconds = _median_seconds(composite, runs + 2)
    # Speech changes the mouth from frame to frame, and a frame that repeats its predecessor costs the
    # encoder next to nothing: the timed frames alternate between the template and a generated mouth.
    encoder = AvatarVp8Encoder()
    shown = (assets.template(0), assets.composite(0, region if assets.upsampler is None else upsampled()))
    numbers = iter(range(runs + 3))

    def encode() -> None:
        number = next(numbers)
        picture = video_frame(shown[number % 2])  # as the video track gives it to aiortc
        picture.pts, picture.time_base = number * 3600, Fraction(1, 90_000)
        encoder.encode(picture)

    encode()  # the key frame costs more than the steady state
    encode_seconds = _median_seconds(encode, runs + 2)
    return TickModel(inference, composite_seconds, encode_seconds, getattr(engine, "threads", 1))


def build_runtime(
    avatar: str | None = None,
    engine: str = "auto",
    profile: str = "rt",
    weights: str | None = None,
    samples_dir: str | Path | None = None,
    variant: str = ENGINE_VARIANT,
    keep_template: bool = KEEP_TEMPLATE,
) -> Runtime:
    weights = weights if weights is not None else own_weights(avatar)  # a personalised avatar's own model
    model, model_id = load_stylesync(profile, weights)
    loaded = load_avatar(avatar, profile, model_id)
    # fp16 graphs for GPUs, and for the CPU's start-up choice, which times them too (engines/select.py)
    fp16 = engine in ("auto", "tensorrt", "onnxruntime-cuda") or variant in ("auto", "fp16")
    export = export_onnx(profile, weights=weights, fp16=fp16)
    runner = open_engine(engine, export, "frame", model=model, variant=variant)
    check_model(runner, loaded.manifest.model_id, loaded.name)
    warm_up(runner)
    samples = Path(samples_dir) if samples_dir else None
    return Runtime(AvatarAssets(loaded), runner, samples_dir=samples, keep_template=keep_template)
