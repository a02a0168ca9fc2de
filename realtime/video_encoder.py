"""The VP8 encoder the server's senders use: aiortc's, with its temporal denoiser off.

aiortc opens libvpx with `noise-sensitivity 4`, a denoiser made for camera noise. An avatar's frames are
a template video with a generated mouth pasted in: the denoiser's work there is smoothing the mouth's
detail away, and it costs CPU on every frame of every viewer. Measured on 150 frames of GRID s4 (720 x
576, 1 Mb/s, one thread, AMD EPYC family 25 model 17, `python -m benchmarks.vp8_settings`): denoiser on
3.7-3.9 ms a frame and 40.2 dB luma PSNR against the input, off 2.6-2.9 ms and 41.9 dB. Everything else
(rate control, real-time deadline, speed) stays as aiortc sets it, so congestion control behaves as it
always did.

aiortc builds a sender's encoder through `aiortc.rtcrtpsender.get_encoder` when the first frame goes
out; `install` wraps that function once per process so that VP8 gets this class and every other codec
aiortc's own (checked against aiortc 1.16; if the name moves, aiortc's encoder stays and `install` says
so).
"""

from __future__ import annotations

import os

import av
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads

# libvpx's options as aiortc 1.16 sets them for WebRTC, but for the denoiser.
NOISE_SENSITIVITY = 0
CPU_USED = -6  # real-time speed; -12 saves another 0.5 ms a frame for 0.8 dB (same measurement)
KEYFRAME_INTERVAL = 3000  # frames; a viewer's loss asks for a key frame (PLI) instead
QUANTIZER_RANGE = (2, 56)
BITRATE_TOLERANCE = 0.1  # aiortc reopens the encoder when congestion control moves the rate further


def open_vp8(width: int, height: int, bitrate: int) -> av.codec.context.CodecContext:
    """libvpx for one viewer's stream at `bitrate` b/s, constant bit rate, no look-ahead."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.gop_size = KEYFRAME_INTERVAL
    codec.qmin, codec.qmax = QUANTIZER_RANGE
    codec.options = {
        "deadline": "realtime",
        "cpu-used": str(CPU_USED),
        "lag-in-frames": "0",
        "noise-sensitivity": str(NOISE_SENSITIVITY),
        "static-thresh": "1",
        "partitions": "0",
        # CBR: min = max = the target rate, a one-second buffer (FFmpeg takes it in bits)
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
    }
    codec.thread_count = number_of_threads(width * height, os.cpu_count() or 1)  # as aiortc does
    return codec


class AvatarVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder (packetisation, picture ids, key frames on request, rate changes from
    congestion control) around a libvpx opened by `open_vp8`."""

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        codec = self.codec
        stale = codec is None or (frame.width, frame.height) != (codec.width, codec.height)
        if not stale and abs(self.target_bitrate - codec.bit_rate) > BITRATE_TOLERANCE * codec.bit_rate:
            stale = True
        if stale:
            # opened here, the parent finds a codec of the right size and rate and keeps it
            self.codec = open_vp8(frame.width, frame.height, self.target_bitrate)
        return super().encode(frame, force_keyframe)


_installed = False


def installed() -> bool:
    """Whether this process's senders encode VP8 with `AvatarVp8Encoder` (/health says so)."""
    return _installed


def install() -> bool:
    """Makes every aiortc sender in this process encode VP8 with `AvatarVp8Encoder`. Idempotent; False
    if this aiortc builds its encoders elsewhere (aiortc's own encoder is then used)."""
    global _installed
    import aiortc.rtcrtpsender as sender

    if _installed:
        return True
    make = getattr(sender, "get_encoder", None)
    if make is None:
        return False

    def get_encoder(codec: object) -> object:
        if getattr(codec, "mimeType", "").lower() == "video/vp8":
            return AvatarVp8Encoder()
        return make(codec)

    sender.get_encoder = get_encoder
    _installed = True
    return True
