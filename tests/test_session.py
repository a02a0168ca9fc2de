"""A session's frames: the template itself while idle, and blends into and out of speech."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes import FakeAssets

from lipstream.avatars.align import invert, transform_points
from lipstream.benchmarks.motion import mouth_box, transition_report
from lipstream.benchmarks.transitions import play
from lipstream.dsp.voice import DEFAULT_REFERENCE, FULL_STRENGTH_FRAMES, VoiceReference, alpha_for_pitch
from lipstream.realtime.clock import MonotonicClock
from lipstream.realtime.compositor import (
    CHROMA_TO_RGB,
    REST_REACH,
    REST_SIGMA,
    RGB_TO_CHROMA,
    AvatarAssets,
    lips_tint,
    rest_keep,
)
from lipstream.realtime.metrics import Metrics
from lipstream.realtime.runtime import Runtime
from lipstream.realtime.scheduler import FrameScheduler
from lipstream.realtime.session import AvatarSession, FramePlan


def _play(runtime: Runtime, audio: np.ndarray, blend_frames: tuple[int, int]) -> tuple[list, list[FramePlan]]:
    """Every frame of `audio` pushed at once, and the plan behind each."""
    plans: list[FramePlan] = []
    return asyncio.run(play(runtime, audio, blend_frames, plans)), plans


def test_idle_frames_are_the_template_frames_untouched(runtime: Runtime) -> None:
    frames, _ = _play(runtime, np.zeros(16_000, np.float32), (4, 6))
    assert {f.kind for f in frames} == {"idle"}
    loop = runtime.assets.loop
    for k, frame in enumerate(frames):
        assert np.array_equal(frame.image, runtime.assets.template(int(loop[k % len(loop)])))


def test_speech_is_entered_and_left_through_blended_frames(runtime: Runtime, speech: np.ndarray) -> None:
    silence = np.zeros(16_000, np.float32)
    audio = np.concatenate([silence, speech[8_000:40_000], silence])
    frames, plans = _play(runtime, audio, (3, 4))
    kinds = [f.kind for f in frames]
    first = kinds.index("speech")
    last = len(kinds) - 1 - kinds[::-1].index("speech")
    # Pushed audio is queued ahead, so the ramp is complete by the first speech frame.
    assert kinds[first - 3 : first] == ["idle", "blend", "blend"], kinds[first - 4 : first + 1]
    assert [round(p.blend, 3) for p in plans[first - 2 : first + 1]] == [0.333, 0.667, 1.0]
    assert kinds[last + 1 : last + 5] == ["blend", "blend", "blend", "idle"], kinds[last : last + 6]
    assert [round(p.blend, 3) for p in plans[last + 1 : last + 5]] == [0.75, 0.5, 0.25, 0.0]
    box = mouth_box(runtime.assets)
    blended = transition_report([f.image for f in frames], kinds, box)
    abrupt_frames, _ = _play(runtime, audio, (1, 1))
    abrupt = transition_report([f.image for f in abrupt_frames], [f.kind for f in abrupt_frames], box)
    # Before compositing kept the template wherever the audio changes nothing (rest_keep), the largest
    # step was the whole generated face's distance from the template: 24.6 grey levels without blending
    # (11.5 x the median step inside speech), 8.2 (3.8 x) over a 3-frame ramp. Now only the mouth
    # enters, so even a cut is a step of about the mouth's own motion (photo avatar, shipped rt weights:
    # 9.5 grey levels, 2.8 x the median step inside speech; 9.2, 2.7 x, over the ramp). Nothing pops:
    assert blended["max_transition"] <= abrupt["max_transition"] + 1e-6, (blended, abrupt)
    assert blended["max_transition"] < 4 * blended["median_speech"], blended


def test_an_interrupt_cuts_to_the_template_at_once(runtime: Runtime, speech: np.ndarray) -> None:
    async def scenario() -> list:
        session = AvatarSession("interrupt", runtime.assets, queue_frames=100)
        scheduler = FrameScheduler(runtime.engine, MonotonicClock())
        scheduler.add(session)
        session.push_audio(speech[8_000:40_000])
        kinds = []
        for _ in range(20):
            await scheduler.tick()
            kinds.append((await session.next_frame()).kind)
        session.clear_buffer()
        for _ in range(3):
            await scheduler.tick()
            kinds.append((await session.next_frame()).kind)
        return kinds

    kinds = asyncio.run(scenario())
    assert kinds[19] == "speech" and kinds[20:] == ["idle"] * 3, kinds


# The logic alone, frame by frame, on FakeAssets: no engine, no clock.


def _fake_session(**options: object) -> tuple[AvatarSession, Metrics]:
    metrics = Metrics()
    return AvatarSession("fake", FakeAssets(), metrics=metrics, **options), metrics


def _push_frames(session: AvatarSession, audio: np.ndarray, frames: int) -> None:
    """Pushes audio until `frames` more entries are buffered (each needs its look-ahead)."""
    target = session.buffered_frames + frames
    while session.buffered_frames < target:
        session.push_audio(audio[:160])
        audio = audio[160:]


def test_playing_starts_once_the_jitter_buffer_holds_more_than_its_frames(speech: np.ndarray) -> None:
    session, _ = _fake_session(jitter_frames=2)
    _push_frames(session, speech[8_000:], 2)
    assert not session.plan().from_input  # 2 buffered: still waiting
    _push_frames(session, speech[8_000 + 640 * 10 :], 1)
    assert session.plan().from_input and session.buffered_frames == 2


def test_input_running_dry_mid_utterance_is_an_underrun_and_shows_idle(speech: np.ndarray) -> None:
    session, metrics = _fake_session(jitter_frames=1)
    _push_frames(session, speech[8_000:], 3)
    plans = [session.plan() for _ in range(5)]
    assert [p.from_input for p in plans] == [True, True, True, False, False]
    assert metrics.underruns.value == 1
    session.end_of_input()  # a finished utterance running out is not an underrun
    _push_frames(session, speech[20_000:], 2)
    session.end_of_input()
    [session.plan() for _ in range(session.buffered_frames + 2)]
    assert metrics.underruns.value == 1


def test_a_live_backlog_beyond_its_limit_is_dropped_and_counted(speech: np.ndarray) -> None:
    session, metrics = _fake_session(jitter_frames=1)
    session.max_backlog_frames = 3
    _push_frames(session, speech[8_000:], 10)
    session.plan()
    assert metrics.late_input_dropped.value == 7 and session.buffered_frames == 2


def test_blend_ramps_up_ahead_of_speech_and_down_after_it_and_interrupt_cuts(speech: np.ndarray) -> None:
    session, _ = _fake_session(jitter_frames=1, blend_frames=(4, 6))
    silence = np.zeros(16_000, np.float32)
    session.push_audio(np.concatenate([silence, speech[8_000:24_000], silence]))
    session.end_of_input()
    plans = [session.plan() for _ in range(session.buffered_frames)]
    blends = [round(p.blend, 2) for p in plans]
    first = next(i for i, p in enumerate(plans) if p.speech)
    assert blends[first - 4 : first + 1] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(p.mel is None for p in plans[: first - 3]) and all(p.mel is not None for p in plans[first - 3 : first])
    last = max(i for i, p in enumerate(plans) if p.speech)
    assert blends[last : last + 7] == [1.0, 0.83, 0.67, 0.5, 0.33, 0.17, 0.0]
    session.push_audio(speech[8_000:24_000])
    [session.plan() for _ in range(10)]
    session.clear_buffer()
    assert session.plan().mel is None and session.plan().blend == 0.0


def test_blend_frames_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _fake_session(blend_frames=(0, 6))


def test_playback_events_mark_the_utterance_to_the_frame(speech: np.ndarray) -> None:
    session, _ = _fake_session(jitter_frames=1, blend_frames=(4, 6))
    events = session.subscribe()
    silence = np.zeros(9_600, np.float32)
    session.push_audio(np.concatenate([speech[8_000:24_000], silence]))  # 1.6 s of audio: 40 frames
    session.end_of_input()
    kinds = []
    for _ in range(60):
        plan = session.plan()
        session.deliver(plan, np.zeros((2, 2, 3), np.uint8))
        kinds.append("idle" if plan.mel is None else "generated")
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert [e.type for e in seen] == ["speech_started", "speech_ended", "idle"]
    started, ended, idle = seen
    assert started.frame == 0 and ended.position_s == pytest.approx(1.6) and ended.interrupted is False
    assert ended.frame - started.frame == 40  # every frame of the utterance, none more
    # idle: the utterance is over and the template shows untouched (here already during its silent tail)
    assert idle.frame == ended.frame and set(kinds[idle.frame :]) == {"idle"} and "generated" in kinds[: idle.frame]
    assert ended.to_json() == {"event": "speech_ended", "frame": 40, "position_s": 1.6, "interrupted": False}


def test_an_interrupt_ends_the_utterance_where_it_was(speech: np.ndarray) -> None:
    session, _ = _fake_session(jitter_frames=1)
    events = session.subscribe()
    session.push_audio(speech[8_000:40_000])
    for _ in range(10):
        session.deliver(session.plan(), np.zeros((2, 2, 3), np.uint8))
    session.clear_buffer()
    session.deliver(session.plan(), np.zeros((2, 2, 3), np.uint8))
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert [(e.type, e.frame) for e in seen] == [("speech_started", 0), ("speech_ended", 10), ("idle", 10)]
    assert seen[1].interrupted is True and seen[1].position_s == pytest.approx(0.4)
    session.unsubscribe(events)
    session.push_audio(speech[8_000:20_000])
    [session.deliver(session.plan(), np.zeros((2, 2, 3), np.uint8)) for _ in range(5)]
    assert events.empty()


def test_frames_carry_the_full_band_playback_audio_aligned_to_the_frame(speech: np.ndarray) -> None:
    """Playback audio is the source at 48 kHz, not the 16 kHz the features use: a click at 1.000 s
    of the source starts frame 25's audio, whatever the chunking; after an interrupt with a discard,
    both streams drop the same span."""
    session, _ = _fake_session(jitter_frames=1)
    features, playback = np.zeros(48_000, np.float32), np.zeros(144_000, np.float32)
    features[16_000] = playback[48_000] = 1.0
    features[:8_000] = speech[8_000:16_000]  # something to play from the start
    playback[:24_000], playback[24_000:48_000] = 0.1, 0.2  # the first half second, and the second
    for start in range(0, 48_000, 1_000):  # odd chunk sizes on both streams
        session.push_audio(features[start : start + 1_000], playback[3 * start : 3 * start + 3_000])
    session.end_of_input()
    frames = [session.plan() for _ in range(session.buffered_frames + 1)]
    assert all(len(f.audio) == 1920 for f in frames)
    played = np.concatenate([f.audio for f in frames])
    assert played[48_000] == 1.0 and played[47_999] == np.float32(0.2) and not played[48_001:].any()
    session.clear_buffer(discard_seconds=0.5)
    session.push_audio(features[:16_000], playback[:48_000])  # the first 0.5 s of both is dropped
    session.end_of_input()
    after = [session.plan() for _ in range(session.buffered_frames + 1)]
    assert sum(f.from_input for f in after) == 13  # 0.5 s left: 12.5 frames, the last completed with silence
    assert after[0].from_input and after[0].audio[0] == np.float32(0.2)


def test_upsampled_playback_when_only_16_khz_is_pushed(speech: np.ndarray) -> None:
    session, _ = _fake_session(jitter_frames=1)
    session.push_audio(speech[8_000:24_000])
    session.end_of_input()
    frames = [session.plan() for _ in range(session.buffered_frames)]
    played = np.concatenate([f.audio for f in frames])
    assert len(played) == 3 * 640 * len(frames)
    # The same sound, 3 times the samples: loudness per frame follows the input's.
    loud_in = np.array([np.abs(speech[8_000 + 640 * k : 8_000 + 640 * (k + 1)]).mean() for k in range(len(frames))])
    loud_out = np.array([np.abs(f.audio).mean() for f in frames])
    assert np.corrcoef(loud_in, loud_out)[0, 1] > 0.95


def test_avatars_with_their_own_shifts_share_one_inference_call(
    runtime: Runtime, speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Personalised avatars (`--delta-p channels`: dW per frame, dP per avatar) and general ones are
    served by one model: a tick batches their speech frames into one engine call, each sample with its
    avatar's shift, and each renders as it would alone."""
    import torch

    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import apply_channel_personalization
    from lipstream.models.config import get_profile
    from lipstream.models.generator import channel_shift_size
    from lipstream.models.personalization import ChannelPersonalization, DeltaW
    from lipstream.realtime.compositor import AvatarAssets

    cfg = get_profile("rt")
    other = tmp_path / "other"
    shutil.copytree(runtime.assets.avatar.path, other)  # the photo, with a shift of its own
    shift = 0.3 * torch.randn(channel_shift_size(cfg), generator=torch.Generator().manual_seed(3))
    apply_channel_personalization(
        other, ChannelPersonalization(DeltaW(cfg).state_dict(), shift, runtime.engine.model_id), {}
    )
    avatars = [runtime.assets, runtime.assets_for("default"), AvatarAssets(Avatar.load(other, runtime.engine.model_id))]
    assert not avatars[0].delta_p.any() and avatars[1].delta_p.any()
    assert runtime.avatar_names()[:2] == ["photo-rt", "default"]  # the one served, then the other built-in
    assert runtime.assets_for("photo") is runtime.assets and runtime.assets_for("default") is avatars[1]

    calls: list[dict[str, np.ndarray]] = []
    original = runtime.engine.run
    monkeypatch.setattr(runtime.engine, "run", lambda feed: calls.append(dict(feed)) or original(feed))

    async def scenario() -> None:
        scheduler = runtime.scheduler(MonotonicClock())
        for number, assets in enumerate(avatars):
            session = AvatarSession(f"s{number}", assets, queue_frames=100, blend_frames=(1, 1))
            scheduler.add(session)
            session.push_audio(speech[:32_000])
        for _ in range(20):  # frames queue up unread (100 fit)
            await scheduler.tick()

    asyncio.run(scenario())
    full = [feed for feed in calls if len(feed["mel"]) == 3]
    assert full, [len(feed["mel"]) for feed in calls]
    feed = full[-1]
    expected = np.stack([a.delta_p for a in avatars])
    np.testing.assert_array_equal(feed["delta_p"], expected)
    together = original(feed)["region"]
    for sample in range(3):
        alone = original({k: v[sample : sample + 1] for k, v in feed.items()})["region"][0]
        np.testing.assert_allclose(together[sample], alone, atol=1e-4)
    unshifted = original({k: v[2:] if k != "delta_p" else np.zeros_like(v[2:]) for k, v in feed.items()})["region"][0]
    assert np.abs(together[2] - unshifted).max() > 1e-2


def test_the_sessions_voice_warp_follows_its_speaker_across_interrupts() -> None:
    """With `--voice-warp auto`, a high voice pushed into a session sets its formant warp (dsp/voice.py)
    and an interrupt keeps it; a fixed warp (the default, 1) is never moved."""
    t = np.arange(32_000) / 16_000
    high_voice = (0.1 * sum(np.sin(2 * np.pi * 230 * k * t) / k for k in range(1, 15))).astype(np.float32)
    session, _ = _fake_session(queue_frames=100, voice_warp=None)
    session.push_audio(high_voice)
    assert session.voice.alpha == alpha_for_pitch(230.0) > 1.2
    session.clear_buffer()
    session.push_audio(np.zeros(1_600, np.float32))
    assert session.voice.alpha == alpha_for_pitch(230.0)
    fixed, _ = _fake_session(queue_frames=100)
    fixed.push_audio(high_voice)
    assert fixed.voice.alpha == 1.0


def test_the_sessions_voice_normalisation_hears_speech_across_interrupts() -> None:
    """With a voice reference, a session maps its speaker's log-mel to it: the speech heard before an
    interrupt still counts after it; without one, a session has no mapping."""
    reference = VoiceReference.from_json(DEFAULT_REFERENCE)
    t = np.arange(32_000) / 16_000
    voice = (0.05 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))).astype(np.float32)
    session, _ = _fake_session(queue_frames=100, voice_norm=reference)
    session.push_audio(voice)
    heard = session.norm.speech_frames
    assert heard > FULL_STRENGTH_FRAMES
    session.clear_buffer()
    session.push_audio(voice[:8_000])
    assert session.norm.speech_frames > heard
    assert _fake_session()[0].norm is None


def test_the_lips_tint_moves_the_models_lips_to_the_templates_chroma_and_keeps_their_luma() -> None:
    """lips_tint: generated lips that are the template's with a blue cast get back the template's chroma
    over the lips weight, and their brightness (what shows the mouth's opening) stays the model's."""
    rng = np.random.default_rng(0)
    crop = rng.integers(90, 170, (32, 64, 3)).astype(np.uint8)
    lips = np.zeros((32, 64), np.float32)
    lips[10:20, 20:44] = 1.0
    cast = CHROMA_TO_RGB @ np.array([-15.0, 14.0], np.float32)  # less red, more blue: GRID s4's one-shot lips
    canvas = crop.astype(np.float32) + cast - 6.0  # and darker
    tint = lips_tint(canvas, crop, lips)
    fixed = canvas + tint
    to_ycrcb = np.array([[0.299, 0.587, 0.114], *RGB_TO_CHROMA], np.float32)
    y_fixed, *chroma_fixed = to_ycrcb @ fixed[15, 30]
    y_crop, *chroma_crop = to_ycrcb @ crop[15, 30].astype(np.float32)
    np.testing.assert_allclose(chroma_fixed, chroma_crop, atol=0.3)
    assert y_fixed == pytest.approx(y_crop - 6.0, abs=0.3)
    assert not lips_tint(canvas, crop, np.zeros_like(lips)).any()  # no lips: no tint


def _within(moved: np.ndarray, crop_area: np.ndarray, transform: np.ndarray, rows: int) -> bool:
    """Whether the frame pixels in `moved` [H, W] all lie in the frame box of the region pixels where
    `crop_area` [rows, S] is set, grown by the smoothing's and the warp's reach."""
    ys, xs = np.nonzero(crop_area)
    size = crop_area.shape[1]
    reach = 3 * REST_SIGMA + 2  # the blur's kernel and the warp's interpolation
    x0, x1, y0, y1 = xs.min() - reach, xs.max() + reach, size - rows + ys.min() - reach, size - rows + ys.max() + reach
    corners = transform_points(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], float), invert(transform))
    (low_x, low_y), (high_x, high_y) = corners.min(axis=0), corners.max(axis=0)
    fy, fx = np.nonzero(moved)
    return bool(low_x <= fx.min() and fx.max() <= high_x and low_y <= fy.min() and fy.max() <= high_y)


def test_compositing_takes_from_the_model_only_what_the_audio_changes(runtime: Runtime) -> None:
    """The region a frame gets in silence is rendered once per avatar, for every frame its idle loop
    shows. Composited, it changes the template frame only on the lips (always the model's), and a
    change to the generated mouth reaches the frame only around that change (rest_keep) and the lips,
    not the rest of the lower face."""
    assets = runtime.assets
    assert sorted(assets.rest) == sorted({int(i) for i in assets.loop})
    index = int(assets.loop[0])
    rest = assets.rest[index].region.astype(np.float32) / 127.5 - 1.0
    rows, size = rest.shape[1:]
    lips = assets.rest[index].lips > 0
    assert 0 < lips.mean() < 0.3
    template, transform = assets.template(index), assets.transforms[index]

    def moved(frame: np.ndarray, by: int = 0) -> np.ndarray:
        return np.abs(frame.astype(int) - template.astype(int)).max(axis=2) > by

    at_rest = moved(assets.composite(index, rest))
    assert at_rest.any() and _within(at_rest, lips, transform, rows)

    changed = rest.copy()
    block = np.zeros((rows, size), bool)
    block[rows // 2 - 4 : rows // 2 + 4, 10:26] = True  # a patch on the left cheek, away from the lips
    assert not (block & lips).any()
    changed[:, block] = np.where(rest[:, block] > 0, -1.0, 1.0)  # far from what silence gives there
    keep = rest_keep(changed, assets.rest[index].region)
    assert keep[rows // 2, 18] == 0.0 and keep[2, size - 3] == 1.0 and keep[-2, -2] == 1.0
    grown = cv2.dilate(block.astype(np.uint8), np.ones((2 * REST_REACH + 1,) * 2, np.uint8)) > 0
    # (by more than rounding: the patch shifts the colour match, and the lips' faint smoothed edge with it)
    cheek = moved(assets.composite(index, changed), by=2) & ~at_rest
    assert cheek.any() and _within(cheek, grown, transform, rows)

    whole = Runtime(AvatarAssets(assets.avatar), runtime.engine, keep_template=False)  # --keep-template off
    assert not whole.assets.rest
    everywhere = moved(whole.assets.composite(index, changed))
    assert everywhere.sum() > 2 * (at_rest | cheek).sum()  # the whole generated lower face
