"""Receive buffers for aiortc that do not hold media longer than they must.

aiortc releases a received frame only once a packet of the NEXT frame has arrived (and, for audio, a
few more: `prefetch`). For audio that is 20 ms per packet of waiting before a session hears anything;
for video it is a whole frame (40 ms at 25 fps) before the picture is decoded, although RTP marks
the last packet of each video frame.

- `LowDelayAudioBuffer` (the server's ingest): an Opus packet is a whole frame, so a packet that
  arrives in order is released at once. A missing packet is waited for while at most `max_wait`
  later ones arrive, then given up; when packets pile up (a late packet filled a gap), only the
  newest is released and the older ones are dropped, so a hiccup never becomes lasting delay.
- `MarkerVideoBuffer` (the benchmark's clients, which stand in for a browser): a video frame is
  released as soon as its packet with the marker bit arrives and the frame is complete, as browsers
  do; otherwise aiortc's own rule applies.

Both replace the private buffer of aiortc's RTCRtpReceiver (checked against aiortc 1.16); if that
layout changes, `install` leaves aiortc's own buffers in place.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class LowDelayAudioBuffer(JitterBuffer):
    def __init__(self, capacity: int = 16, max_wait: int = 2) -> None:
        super().__init__(capacity, prefetch=0)
        self.max_wait = max_wait
        self.lost = 0  # packets never received (given up after max_wait later ones)
        self.dropped = 0  # packets received too late to be played without adding delay

    def _slot(self, offset: int) -> object:
        return self._packets[(self._origin + offset) % self.capacity]

    def _run(self) -> int:
        """Consecutive packets held from the origin on."""
        run = 0
        while run < self.capacity and self._slot(run) is not None:
            run += 1
        return run

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        run = self._run()
        if run == 0:
            held = [offset for offset in range(self.capacity) if self._slot(offset) is not None]
            if len(held) < self.max_wait:
                return None  # the missing packet may still come
            self.remove(held[0])
            self.lost += held[0]
            run = self._run()
        packet = self._slot(run - 1)
        self.dropped += run - 1
        self.remove(run)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)


class MarkerVideoBuffer(JitterBuffer):
    def __init__(self, capacity: int = 512) -> None:
        super().__init__(capacity, is_video=True)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                break
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=packet.timestamp)
        return super()._remove_frame(sequence_number)


def install(pc: RTCPeerConnection, kind: str, make: type[JitterBuffer]) -> bool:
    """Gives every receiver of `kind` ("audio" or "video") a fresh buffer made by `make`; call it after
    setRemoteDescription, before media flows. False if aiortc's receiver no longer has the field."""
    receivers = [t.receiver for t in pc.getTransceivers() if t.kind == kind]
    if not all(hasattr(r, _RECEIVER_BUFFER) for r in receivers):
        return False
    for receiver in receivers:
        setattr(receiver, _RECEIVER_BUFFER, make())
    return True
