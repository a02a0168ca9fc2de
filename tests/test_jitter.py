"""The low-delay receive buffers, fed RTP packets in order, out of order, with losses and bursts."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from lipstream.realtime.jitter import LowDelayAudioBuffer, MarkerVideoBuffer, install


def packet(seq: int, timestamp: int, marker: bool = False) -> RtpPacket:
    p = RtpPacket(sequence_number=seq % 65536, timestamp=timestamp, marker=int(marker))
    p._data = bytes([seq % 256])
    return p


def audio(seq: int) -> RtpPacket:
    return packet(seq, 960 * seq)


def released(buffer: JitterBuffer, p: RtpPacket) -> int | None:
    """The sequence number (mod 256) of the frame the buffer releases on this packet, if any."""
    _, frame = buffer.add(p)
    return None if frame is None else frame.data[0]


def test_audio_in_order_is_released_at_once_where_aiortc_waits() -> None:
    ours, stock = LowDelayAudioBuffer(), JitterBuffer(capacity=16, prefetch=4)
    assert [released(ours, audio(s)) for s in range(100, 110)] == list(range(100, 110))
    stock_out = [released(stock, audio(s)) for s in range(100, 110)]
    assert stock_out[:4] == [None] * 4 and stock_out[4:6] == [100, 101]  # aiortc: 4 packets (80 ms) behind


def test_audio_sequence_wraps_around() -> None:
    buffer = LowDelayAudioBuffer()
    seqs = range(65530, 65540)
    assert [released(buffer, audio(s)) for s in seqs] == [s % 256 for s in seqs]


def test_a_late_packet_is_waited_for_briefly() -> None:
    buffer = LowDelayAudioBuffer(max_wait=2)
    assert released(buffer, audio(1)) == 1
    assert released(buffer, audio(3)) is None  # 2 is missing: wait
    assert released(buffer, audio(2)) == 3  # 2 came late: the newest is played, 2 is dropped, no lag left
    assert (buffer.lost, buffer.dropped) == (0, 1)
    assert released(buffer, audio(4)) == 4


def test_a_lost_packet_is_given_up_without_lasting_delay() -> None:
    buffer = LowDelayAudioBuffer(max_wait=2)
    assert released(buffer, audio(1)) == 1
    assert released(buffer, audio(3)) is None
    assert released(buffer, audio(4)) == 4  # 2 given up after two later packets
    assert (buffer.lost, buffer.dropped) == (1, 1)
    assert [released(buffer, audio(s)) for s in range(5, 9)] == [5, 6, 7, 8]  # in step again
    assert released(buffer, audio(2)) is None  # far too late: ignored


def test_video_frame_released_on_its_marker_not_on_the_next_frame() -> None:
    ours, stock = MarkerVideoBuffer(), JitterBuffer(capacity=512, is_video=True)
    frame_one = [packet(10, 3600), packet(11, 3600), packet(12, 3600, marker=True)]
    assert [released(ours, p) for p in frame_one] == [None, None, 10]
    assert [released(stock, p) for p in frame_one] == [None, None, None]  # aiortc waits for frame two
    frame_two = [packet(13, 7200), packet(14, 7200, marker=True)]
    assert [released(ours, p) for p in frame_two] == [None, 13]
    assert released(stock, frame_two[0]) == 10


def test_incomplete_video_frame_is_not_released_on_its_marker() -> None:
    buffer = MarkerVideoBuffer()
    assert released(buffer, packet(20, 3600)) is None
    assert released(buffer, packet(22, 3600, marker=True)) is None  # 21 missing
    assert released(buffer, packet(21, 3600)) == 20


def test_install_replaces_the_receivers_buffers() -> None:
    async def scenario() -> None:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        try:
            assert install(pc, "audio", LowDelayAudioBuffer) and install(pc, "video", MarkerVideoBuffer)
            kinds = {t.kind: type(t.receiver._RTCRtpReceiver__jitter_buffer) for t in pc.getTransceivers()}
            assert kinds == {"audio": LowDelayAudioBuffer, "video": MarkerVideoBuffer}
        finally:
            await pc.close()

    asyncio.run(scenario())
