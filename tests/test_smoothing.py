"""Style smoothing over frames (StyleLipSync's MaLS, causal): the model, the frame graph, the scheduler."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import torch

from lipstream.models.report import example_inputs
from lipstream.models.stylesync import StyleSync
from lipstream.realtime.clock import MonotonicClock
from lipstream.realtime.runtime import Runtime
from lipstream.realtime.scheduler import FrameScheduler
from lipstream.realtime.session import AvatarSession


def test_smoothing_blends_the_previous_styles_and_zero_changes_nothing() -> None:
    torch.manual_seed(0)
    model = StyleSync("rt").eval()
    inputs = example_inputs(model.cfg, batch=2)
    with torch.no_grad():
        face = model.encode_face(inputs["target"], inputs["reference"], inputs["mask"])
        plain = model.render(inputs["mel"], face.f_f, face.delta_w, face.maps)
        ws = model.styles(inputs["mel"], face.f_f, face.delta_w)
        previous = torch.randn_like(ws)
        off, ws_off = model.render_smoothed(
            inputs["mel"], face.f_f, face.delta_w, face.maps, previous, torch.zeros(2, 1)
        )
        assert torch.equal(off, plain) and torch.equal(ws_off, ws)
        half, ws_half = model.render_smoothed(
            inputs["mel"], face.f_f, face.delta_w, face.maps, previous, torch.tensor([[0.5], [0.0]])
        )
        assert torch.allclose(ws_half[0], (ws[0] + previous[0]) / 2) and torch.equal(ws_half[1], ws[1])
        assert not torch.allclose(half[0], plain[0]) and torch.allclose(half[1], plain[1], atol=1e-6)


def _frames(
    runtime: Runtime,
    audio: np.ndarray,
    smoothing: float,
) -> tuple[list, FrameScheduler]:
    async def scenario() -> tuple[list, FrameScheduler]:
        session = AvatarSession("smooth", runtime.assets, queue_frames=400)
        scheduler = FrameScheduler(runtime.engine, MonotonicClock(), style_smoothing=smoothing)
        scheduler.add(session)
        session.push_audio(audio)
        session.end_of_input()
        frames = []
        for _ in range(len(audio) // 640):
            await scheduler.tick()
            frames.append(await session.next_frame())
        return frames, scheduler

    return asyncio.run(scenario())


def test_the_scheduler_smooths_each_utterance_and_starts_afresh_after_silence(
    runtime: Runtime,
    speech: np.ndarray,
) -> None:
    silence = np.zeros(16_000, np.float32)
    audio = np.concatenate([speech[:32_000], silence, speech[32_000:64_000], silence])
    plain, _ = _frames(runtime, audio, 0.0)
    smooth, scheduler = _frames(runtime, audio, 0.6)
    kinds = [f.kind for f in plain]
    assert kinds == [f.kind for f in smooth]
    starts = [i for i, k in enumerate(kinds) if k != "idle" and (i == 0 or kinds[i - 1] == "idle")]
    assert len(starts) >= 2, kinds
    for start in starts:  # each utterance's first generated frame has nothing to blend with
        assert np.array_equal(plain[start].image, smooth[start].image)
        # Its ramp's frames are silent (identical styles); from speech on the styles are smoothed.
        speech = kinds.index("speech", start)
        assert not np.array_equal(plain[speech + 2].image, smooth[speech + 2].image)
    assert not scheduler._styles  # silent at the end: no state kept

    def motion(frames: list) -> float:
        """Mean frame-to-frame change of the image during speech (grey levels)."""
        steps = [
            np.abs(b.image.astype(np.float32) - a.image.astype(np.float32)).mean()
            for a, b in itertools.pairwise(frames)
            if a.kind == b.kind == "speech"
        ]
        return float(np.mean(steps))

    assert motion(smooth) < 0.9 * motion(plain)


def test_smoothing_outside_zero_to_one_is_refused(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FrameScheduler(runtime.engine, MonotonicClock(), style_smoothing=1.0)
