"""A server process's settings, with their defaults: one home for the server and for `lipstream serve`'s
options (this module imports neither torch nor the server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from lipstream.dsp.voice import DEFAULT_REFERENCE, DEFAULT_WARP, VoiceReference

from .ice import IceSettings
from .tts import EspeakProvider, TTSProvider

# How far the audio moves the styles from those of silence (the frame graph's motion_gain, `serve` and
# `render --motion-gain`; 1: as trained).
MOTION_GAIN = 1.0
MAX_MOTION_GAIN = 3.0
# The mel filterbank's warp towards the voice the model learnt (`serve` and `render --voice-warp`):
# None follows each session's speaker by pitch, 1 (the default, dsp/voice.py says why) hears it as it is.
VOICE_WARP: float | None = DEFAULT_WARP
# Each session's voice shifted, band by band, to the mean speech spectrum of the voice the model
# learnt (dsp/voice.py's VoiceNorm; `serve`, `render` and `evaluate --voice-norm`).
VOICE_NORM = True


def voice_reference(on: bool = VOICE_NORM) -> VoiceReference | None:
    """The reference that sessions' voices are normalised to: the shipped one when `on`, else None."""
    return _shipped_reference() if on else None


@lru_cache(maxsize=1)
def _shipped_reference() -> VoiceReference:
    """Read once per process: every Runtime (and `serve`'s options after it) shares it, read-only."""
    return VoiceReference.from_json(DEFAULT_REFERENCE)


# How the CPU engine runs the graph (engines/select.py's ENGINE_VARIANTS): auto times ONNX Runtime's
# optimisation levels at start-up and keeps the fastest that matches the default's outputs.
ENGINE_VARIANT = "auto"
# Compositing takes from the model only what the audio changes, and keeps the template's own pixels
# wherever the generated region equals the one of silence (compositor.rest_keep; `--keep-template`).
KEEP_TEMPLATE = True


@dataclass
class ServerSettings:
    max_sessions: int = 4  # admission control: more would push two cores below 25 fps
    max_sessions_per_client: int = 2  # per remote address
    tokens: tuple[str, ...] = ()  # bearer tokens; empty: no authentication (loopback and trusted networks)
    ice: IceSettings = field(default_factory=IceSettings)  # STUN/TURN for every peer, and TURN credentials
    push_ahead_seconds: float = 5.0  # how far an HTTP push may run ahead of playback before it is throttled
    jitter_frames: int = 1  # input frames buffered before playback starts (absorbs arrival jitter)
    abandoned_after: float = 60.0  # a session with no peer and no audio for this long is ended
    measured_admission: bool = True  # also refuse sessions the machine's measured spare CPU cannot hold
    tts: TTSProvider = field(default_factory=EspeakProvider)  # speaks the text of POST .../speak
    cors_origins: tuple[str, ...] = ()  # browser origins (or "*") whose pages may call the API and WHIP/WHEP
    # This process's name among several behind a load balancer: it starts every session and watch id, so
    # that the balancer sends each later request of a session to the process that owns it (deploy/haproxy.py).
    instance: str = ""
    agent_port: int = 0  # HAProxy's agent check reads this process's admission state here (0: no agent)
    agent_host: str = "127.0.0.1"
    # Proxies (their addresses) whose X-Forwarded-For names the client: the limit per client counts
    # clients behind a load balancer, not the balancer. Nobody else's header is believed.
    trusted_proxies: tuple[str, ...] = ()
    janus_url: str = ""  # Janus's HTTP API (http://host:8088/janus): POST /sessions/{id}/publish fans out there
