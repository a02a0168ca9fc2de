"""One avatar session: audio in, frames out, on the LiveKit avatar-worker contract.

    session.push_audio(samples[, playback])  16 kHz mono float32 (and the same at 48 kHz), as it arrives
    session.end_of_input()           an utterance (a file, a TTS reply) is complete: play out its tail
    session.clear_buffer()           interrupt: drop queued audio and pending frames, go idle
    async for frame in session: ...  OutputFrame(number, image, audio), 25 per second
    session.subscribe()              a queue of PlaybackEvents: speech_started, speech_ended, idle

Input audio becomes per-frame entries as soon as each frame's mel window is complete (the look-ahead):
the window, the frame's own 40 ms of playback audio (1920 samples at 48 kHz: the input's full band,
not the features' 16 kHz), and whether it holds speech. The entries wait in a small
jitter buffer; the shared scheduler takes one frame from every session per 40 ms tick (`plan`), runs
inference for the speech frames of all sessions in one batch, and hands back images (`deliver`).
A frame's audio leaves together with its image, so sound and mouth cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from itertools import islice

import numpy as np

from lipstream.dsp import PLAYBACK_RATE, MelConfig, StreamingMelWindows, WindowBatch, serving_config
from lipstream.dsp.voice import VoiceNorm, VoiceReference, VoiceWarp

from .audio_in import RateConverter, VoiceActivity
from .compositor import AvatarAssets
from .metrics import Metrics
from .settings import VOICE_WARP

logger = logging.getLogger("lipstream.realtime")

MAX_BUFFER_SECONDS = 30.0
# Frames over which the view passes from the template's own lower face to the generated one at speech
# onset (the ramp starts on queued frames ahead of it when there are some), and back after speech. The
# way out can be slower: nothing is said meanwhile.
BLEND_IN_FRAMES = 4
BLEND_OUT_FRAMES = 6


class BufferFullError(RuntimeError):
    """Audio pushed much faster than real time: more than MAX_BUFFER_SECONDS is waiting."""


@dataclass
class FramePlan:
    session: AvatarSession
    index: int  # template frame shown
    mel: np.ndarray | None  # [1, 80, 16] when the frame needs inference (blend > 0), else None
    audio: np.ndarray  # [1920] float32 at 48 kHz, the audio leaving with this frame
    from_input: bool  # the audio is the client's (else silence while idle)
    blend: float = 0.0  # weight of the generated lower face against the template's own (0: idle)
    speech: bool = False  # the frame's audio holds speech


@dataclass
class OutputFrame:
    number: int  # session frame counter: RTP video timestamp 3600 * number, audio sample 1920 * number
    image: np.ndarray  # [H, W, 3] uint8 RGB
    audio: np.ndarray  # [1920] float32, 48 kHz
    kind: str  # "speech" (generated), "blend" (passing to or from the template), "idle" (the template)
    # Its audio is an utterance's (pauses included), not filler silence: what a client that plays only
    # speech must play. Not the same as kind != "idle": a frame whose inference overran shows the template.
    from_input: bool = False


@dataclass(frozen=True)
class PlaybackEvent:
    """What a viewer's playback is doing, stamped with the session frame it happens at (the frame's RTP
    video timestamp is 3600 x frame). speech_started: the first frame of an utterance's audio is played;
    speech_ended: its audio has all been played, or was interrupted, after position_s seconds of it;
    idle: the first frame that shows the template untouched again."""

    type: str  # "speech_started", "speech_ended" or "idle"
    frame: int
    position_s: float | None = None  # speech_ended only
    interrupted: bool | None = None  # speech_ended only

    def to_json(self) -> dict:
        extra = {} if self.position_s is None else {"position_s": self.position_s, "interrupted": self.interrupted}
        return {"event": self.type, "frame": self.frame} | extra


EVENT_QUEUE = 64  # events a slow listener may fall behind by before the oldest are dropped


@dataclass
class _Entry:
    window: np.ndarray  # [80, 16]
    audio: np.ndarray  # [1920] at 48 kHz
    speech: bool


class AvatarSession:
    def __init__(
        self,
        session_id: str,
        assets: AvatarAssets,
        mel_cfg: MelConfig | None = None,
        jitter_frames: int = 1,
        queue_frames: int = 25,
        metrics: Metrics | None = None,
        blend_frames: tuple[int, int] = (BLEND_IN_FRAMES, BLEND_OUT_FRAMES),
        voice_warp: float | None = VOICE_WARP,
        voice_norm: VoiceReference | None = None,
    ) -> None:
        if min(blend_frames) < 1:
            raise ValueError(f"blend_frames (in, out) must be at least 1 each (1: no blending); got {blend_frames}")
        self.id = session_id
        self.metrics = metrics or Metrics()
        self.assets = assets
        self.mel_cfg = mel_cfg or serving_config()
        # The speaker's formants brought to the model's voice (dsp/voice.py): one pitch history for the
        # whole session, across interruptions.
        self.voice = VoiceWarp(self.mel_cfg, fixed=voice_warp)
        # ... and its mean speech spectrum to the learnt voice's (one history across interruptions, too)
        self.norm = None if voice_norm is None else VoiceNorm(voice_norm, self.mel_cfg)
        self.jitter_frames = jitter_frames
        self.blend_frames = blend_frames
        self._blend = 0.0  # the last frame's weight of the generated lower face
        cfg = self.mel_cfg
        self._silent_window = np.full((1, cfg.n_mels, cfg.window_frames), -cfg.max_abs_value, np.float32)
        self._entries: deque[_Entry] = deque()
        self._playing = False
        self._ended = False
        self._new_stream()
        self._position = 0
        self._number = 0
        self._out: asyncio.Queue[OutputFrame] = asyncio.Queue(maxsize=queue_frames)
        self.closed = False
        self._listeners: set[asyncio.Queue[PlaybackEvent]] = set()
        self._utterance_frames: int | None = None  # frames of the playing utterance shown so far (None: none)
        self._idle_announced = True
        self._consumed = asyncio.Event()  # set whenever buffered input shrinks
        self._discard = 0.0  # seconds of input still to drop after an interrupt
        # Live input (a microphone over WebRTC) arrives in real time, so a backlog only grows when the
        # machine fell behind; playing it late would add that delay for good. Set for live sessions:
        # frames beyond this backlog are dropped (counted). None: pushed audio, played however far ahead.
        self.max_backlog_frames: int | None = None

    # -- input side -------------------------------------------------------------------------------
    def _new_stream(self) -> None:
        self._mel = StreamingMelWindows(self.mel_cfg, self.voice, self.norm)
        self._vad = VoiceActivity()
        self._samples = np.zeros(0, np.float32)  # this stream's samples from _offset on
        self._offset = 0
        self._playback = np.zeros(0, np.float32)  # the same at 48 kHz, from _offset * _ratio on
        self._upsampler: RateConverter | None = None

    @property
    def _ratio(self) -> int:
        return PLAYBACK_RATE // self.mel_cfg.sample_rate

    def push_audio(self, samples: np.ndarray, playback: np.ndarray | None = None) -> None:
        """samples: [n] float32 mono at 16 kHz; playback: the same stretch at 48 kHz (about 3 n samples),
        from the source itself so that it keeps the full band. Without it, `samples` are upsampled."""
        if self._ended:  # a new utterance after end_of_input
            self._new_stream()
            self._ended = False
        if len(self._entries) * self.mel_cfg.samples_per_frame > MAX_BUFFER_SECONDS * self.mel_cfg.sample_rate:
            raise BufferFullError(
                f"session {self.id}: more than {MAX_BUFFER_SECONDS:.0f} s of audio is waiting; push audio no faster "
                "than about real time"
            )
        samples = np.asarray(samples, np.float32)
        if playback is None:
            self._upsampler = self._upsampler or RateConverter(self.mel_cfg.sample_rate, PLAYBACK_RATE)
            playback = self._upsampler.push(samples)
        playback = np.asarray(playback, np.float32)
        if self._discard > 0:
            dropped = min(self._discard, len(samples) / self.mel_cfg.sample_rate)
            self._discard -= dropped
            samples = samples[round(dropped * self.mel_cfg.sample_rate) :]
            playback = playback[round(dropped * PLAYBACK_RATE) :]
        self._samples = np.concatenate([self._samples, samples])
        self._playback = np.concatenate([self._playback, playback])
        with self.metrics.timed("vad"):
            self._vad.push(samples)
        alpha = self.voice.alpha
        with self.metrics.timed("mel"):
            windows = self._mel.push(samples)
        if self.voice.alpha != alpha:
            logger.info("session %s: the voice warp is now %.2f (from the speaker's pitch)", self.id, self.voice.alpha)
        self._queue(windows)

    def end_of_input(self) -> None:
        """The current utterance is complete; its last frames are released (their window is padded). A
        last part-frame of audio is completed with silence, so that every sample sent is played."""
        if not self._ended:
            short = -self._mel.samples_in % self.mel_cfg.samples_per_frame
            if short:
                self.push_audio(np.zeros(short, np.float32), np.zeros(short * self._ratio, np.float32))
            self._queue(self._mel.flush())
            self._ended = True

    async def wait_until_buffered_at_most(self, frames: int) -> None:
        """Back-pressure for pushers faster than real time: returns once playback has caught up."""
        while len(self._entries) > frames and not self.closed:
            self._consumed.clear()
            await self._consumed.wait()

    def close(self) -> None:
        self.closed = True
        self._consumed.set()

    def clear_buffer(self, discard_seconds: float = 0.0) -> None:
        """Interrupt: queued audio and frames not yet shown are dropped; the next frame is idle.

        discard_seconds: also drop this much of the audio pushed next, which a network client may
        already have had in flight when it asked for the interrupt.
        """
        self._discard = discard_seconds
        self._end_utterance(interrupted=True)
        self._consumed.set()
        self._entries.clear()
        self._playing = False
        self._blend = 0.0  # an interrupt cuts to the template at once, as the sound stops at once
        self._new_stream()
        self._ended = False
        while not self._out.empty():
            self._out.get_nowait()

    def _queue(self, batch: WindowBatch) -> None:
        cfg = self.mel_cfg
        per_frame, ratio = cfg.samples_per_frame, self._ratio
        for i, window in enumerate(batch.windows):
            k = batch.first_frame + i
            start = (k * per_frame - self._offset) * ratio
            audio = self._playback[start : start + per_frame * ratio]
            audio = np.pad(audio, (0, per_frame * ratio - len(audio)))  # the resampler's last few samples
            span_start = max(cfg.window_start(k) * cfg.hop_length - cfg.n_fft // 2, 0)
            speech = self._vad.speech(span_start, cfg.samples_needed(k))
            self._entries.append(_Entry(window, audio, speech))
        keep_from = max(self._mel.next_frame * per_frame - cfg.n_fft, 0)  # samples later frames still need
        if keep_from > self._offset:
            self._samples = self._samples[keep_from - self._offset :]
            self._playback = self._playback[(keep_from - self._offset) * ratio :]
            self._offset = keep_from
            self._vad.forget_before(max(keep_from - 2 * cfg.n_fft, 0))

    # -- scheduler side ---------------------------------------------------------------------------
    def plan(self) -> FramePlan:
        """The next frame: the next buffered input frame if playing, else an idle frame with silence."""
        loop = self.assets.loop
        index = int(loop[self._position % len(loop)])
        self._position += 1
        if not self._playing and (len(self._entries) > self.jitter_frames or (self._ended and self._entries)):
            self._playing = True
        if self._playing and not self._entries:
            self._playing = False
            if not self._ended:
                self.metrics.underruns.inc()
        if not self._playing:
            silence = np.zeros(self.mel_cfg.samples_per_frame * self._ratio, np.float32)
            return self._blended(index, None, silence, False, False)
        if self.max_backlog_frames is not None and len(self._entries) > self.max_backlog_frames:
            excess = len(self._entries) - self.max_backlog_frames
            for _ in range(excess):
                self._entries.popleft()
            self.metrics.late_input_dropped.inc(excess)
        entry = self._entries.popleft()
        self._consumed.set()
        # Speech within the next few queued frames starts the ramp early, so that it is complete by then.
        coming = entry.speech or any(e.speech for e in islice(self._entries, self.blend_frames[0] - 1))
        return self._blended(index, entry.window[None], entry.audio, True, entry.speech, coming)

    def _blended(
        self,
        index: int,
        window: np.ndarray | None,
        audio: np.ndarray,
        from_input: bool,
        speech: bool,
        towards_speech: bool = False,
    ) -> FramePlan:
        """A frame plan whose generated share moves one step towards 1 (speech now or soon; steps of
        1 / blend-in frames) or towards 0 (steps of 1 / blend-out frames); while it is above 0 the frame
        is generated, from its own mel window, or from silence when no input is left."""
        blend_in, blend_out = self.blend_frames
        if towards_speech:
            self._blend = min(1.0, self._blend + 1.0 / blend_in)
        else:
            self._blend = max(0.0, self._blend - 1.0 / blend_out)
        if self._blend < 1e-6:
            self._blend = 0.0
            return FramePlan(self, index, None, audio, from_input, 0.0, speech)
        mel = window if window is not None else self._silent_window
        return FramePlan(self, index, mel, audio, from_input, self._blend, speech)

    def deliver(self, plan: FramePlan, image: np.ndarray) -> None:
        kind = "idle" if plan.mel is None else "speech" if plan.speech else "blend"
        self._announce(plan, kind)
        if self._out.full():  # nobody is reading fast enough: drop the oldest frame, keep the newest
            self._out.get_nowait()
            self.metrics.output_dropped.inc()
        self._out.put_nowait(OutputFrame(self._number, image, plan.audio, kind, plan.from_input))
        self._number += 1

    # -- playback events --------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[PlaybackEvent]:
        """A queue that receives every PlaybackEvent from now on; unsubscribe it when done."""
        queue: asyncio.Queue[PlaybackEvent] = asyncio.Queue(maxsize=EVENT_QUEUE)
        self._listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[PlaybackEvent]) -> None:
        self._listeners.discard(queue)

    def _emit(self, event: PlaybackEvent) -> None:
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _announce(self, plan: FramePlan, kind: str) -> None:
        """Events for the frame about to be delivered (number self._number)."""
        if plan.from_input:
            if self._utterance_frames is None:
                self._utterance_frames = 0
                self._idle_announced = False
                self._emit(PlaybackEvent("speech_started", self._number))
            self._utterance_frames += 1
        else:
            self._end_utterance(interrupted=False)
        if kind == "idle" and not self._idle_announced and self._utterance_frames is None:
            self._idle_announced = True
            self._emit(PlaybackEvent("idle", self._number))

    def _end_utterance(self, interrupted: bool) -> None:
        if self._utterance_frames is not None:
            position = round(self._utterance_frames * self.mel_cfg.samples_per_frame / self.mel_cfg.sample_rate, 6)
            self._emit(PlaybackEvent("speech_ended", self._number, position, interrupted))
            self._utterance_frames = None

    # -- output side ------------------------------------------------------------------------------
    async def next_frame(self) -> OutputFrame:
        return await self._out.get()

    def __aiter__(self) -> AvatarSession:
        return self

    async def __anext__(self) -> OutputFrame:
        if self.closed:
            raise StopAsyncIteration
        return await self.next_frame()

    @property
    def buffered_frames(self) -> int:
        return len(self._entries)

    @property
    def idle(self) -> bool:
        return not self._playing and not self._entries
