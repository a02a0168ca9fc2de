"""Signalling: WebRTC peers joined to sessions. POST /offer (aiortc's JSON convention: the peer sends
its microphone and receives the avatar), WHIP ingest (RFC 9725), WHEP viewers, and sessions opened
without a peer; ending sessions and viewers."""

from __future__ import annotations

import json
import secrets

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from . import janus, jitter
from .ice import as_json, link_header
from .ingest import forward_events, ingest_track
from .log import logger
from .registry import STATE, LiveSession, ServerState
from .security import check_sdp, error_response


async def _answer(
    state: ServerState, live: LiveSession, offer: RTCSessionDescription, send: bool, ingest: bool
) -> tuple[str, RTCPeerConnection]:
    """Connects one peer to a session: it may send audio in (ingest), receive the avatar (send), or both."""
    pc = RTCPeerConnection(state.peer_configuration(live.session.id))
    peer_id = secrets.token_urlsafe(8)
    live.peers[peer_id] = pc

    @pc.on("track")
    def on_track(track: object) -> None:
        if ingest and track.kind == "audio":
            state.spawn(live, ingest_track(live, track), "ingest")

    @pc.on("datachannel")
    def on_datachannel(channel: object) -> None:
        async def send(event: dict) -> None:
            if channel.readyState != "open":
                raise ConnectionResetError("the data channel closed")
            channel.send(json.dumps(event))

        state.spawn(live, forward_events(live, send), "channel-events")

        @channel.on("message")
        def on_message(message: object) -> None:
            if message == "interrupt" or (isinstance(message, str) and '"interrupt"' in message):
                live.interrupt()

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            live.peers.pop(peer_id, None)
            if ingest:
                await state.close(live.session.id)
            else:
                live.viewers.discard(peer_id)
                live.broadcast.detach(peer_id)
                live.touch()  # the idle clock starts when the last viewer leaves

    try:
        await pc.setRemoteDescription(offer)
        # aiortc's own buffer waits 80 ms; without ours every ingest peer carries that delay
        if ingest and not jitter.install(pc, "audio", jitter.LowDelayAudioBuffer):
            state.runtime.metrics.jitter_patch_missing.inc()
            logger.error(
                "this aiortc has no receiver buffer field to replace: the low-delay audio buffer is "
                "not installed and ingest keeps aiortc's 80 ms of buffering; pin aiortc as pyproject.toml does"
            )
        if send:
            video, audio = live.broadcast.attach(peer_id)
            pc.addTrack(video)
            pc.addTrack(audio)
        await pc.setLocalDescription(await pc.createAnswer())
    except (ValueError, KeyError, TypeError) as err:
        live.peers.pop(peer_id, None)
        await pc.close()
        raise error_response(web.HTTPBadRequest, f"the SDP offer could not be used: {err}") from err
    if state.settings.ice.relay_only and " typ relay" not in pc.localDescription.sdp:
        live.peers.pop(peer_id, None)
        await pc.close()
        message = (
            f"the TURN server ({', '.join(state.settings.ice.urls)}) gave this relay-only server no relayed "
            "address: it is unreachable or refused the credentials (check its shared secret)"
        )
        logger.error(message)
        raise error_response(web.HTTPBadGateway, message)
    return peer_id, pc


def _offer_from(text: str, need_audio_in: bool, need_video_out: bool) -> RTCSessionDescription:
    check_sdp(text, need_audio_in, need_video_out)
    return RTCSessionDescription(sdp=text, type="offer")


async def _sdp_body(request: web.Request) -> str:
    try:
        return (await request.read()).decode("utf-8")
    except UnicodeDecodeError as err:
        raise error_response(web.HTTPBadRequest, f"the SDP offer is not UTF-8 text (byte {err.start})") from err


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
        sdp, kind = body["sdp"], body["type"]
    except (ValueError, KeyError, TypeError) as err:
        raise error_response(web.HTTPBadRequest, 'expected JSON {"sdp": "...", "type": "offer"}') from err
    avatar = body.get("avatar")
    if kind != "offer" or not isinstance(sdp, str) or not isinstance(avatar, str | None):
        raise error_response(
            web.HTTPBadRequest, 'expected JSON {"sdp": "...", "type": "offer"} (and optionally "avatar")'
        )
    description = _offer_from(sdp, need_audio_in=False, need_video_out=True)
    live = await state.open(state.client_of(request), avatar)
    try:
        _, pc = await _answer(state, live, description, send=True, ingest=True)
    except web.HTTPException:
        await state.close(live.session.id)
        raise
    local = pc.localDescription
    return web.json_response(
        {"sdp": local.sdp, "type": local.type, "session_id": live.session.id, "watch_url": f"/whep/{live.watch_id}"}
    )


async def create_session(request: web.Request) -> web.Response:
    """A session without a peer of its own: audio comes by HTTP, WebSocket or `lipstream talk`,
    viewers by WHEP. JSON body (optional): {"avatar": NAME}."""
    state = request.app[STATE]
    avatar = None
    if request.can_read_body:
        expected = 'expected no body, or JSON {"avatar": "NAME"}'
        try:
            body = await request.json()
        except ValueError as err:
            raise error_response(web.HTTPBadRequest, expected) from err
        if not isinstance(body, dict) or not isinstance(body.get("avatar"), str | None):
            raise error_response(web.HTTPBadRequest, expected)
        avatar = body.get("avatar")
    live = await state.open(state.client_of(request), avatar)
    return web.json_response(
        {"session_id": live.session.id, "watch_url": f"/whep/{live.watch_id}"},
        status=201,
        headers={"Location": f"/sessions/{live.session.id}"},
    )


async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.content_type != "application/sdp":
        raise error_response(web.HTTPUnsupportedMediaType, "WHIP expects Content-Type: application/sdp")
    description = _offer_from(await _sdp_body(request), need_audio_in=True, need_video_out=False)
    live = await state.open(state.client_of(request), request.query.get("avatar"))
    try:
        _, pc = await _answer(state, live, description, send=False, ingest=True)
    except web.HTTPException:
        await state.close(live.session.id)
        raise
    location = f"/whip/{live.session.id}"
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": location, "X-Session-Id": live.session.id, "X-Watch-Url": f"/whep/{live.watch_id}"}
        | link_header(state.ice_servers(live.session.id)),
    )


async def whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = state.watching(request.match_info["watch"])
    if request.content_type != "application/sdp":
        raise error_response(web.HTTPUnsupportedMediaType, "WHEP expects Content-Type: application/sdp")
    offer = _offer_from(await _sdp_body(request), need_audio_in=False, need_video_out=True)
    peer_id, pc = await _answer(state, live, offer, send=True, ingest=False)
    live.viewers.add(peer_id)
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": f"/whep/{live.watch_id}/{peer_id}"} | link_header(state.ice_servers(live.session.id)),
    )


async def end_whep(request: web.Request) -> web.Response:
    live = request.app[STATE].watching(request.match_info["watch"])
    viewer = request.match_info["viewer"]
    pc = live.peers.pop(viewer, None) if viewer in live.viewers else None  # never the session's own peer
    if pc is None:
        raise error_response(web.HTTPNotFound, "no such viewer")
    live.broadcast.detach(request.match_info["viewer"])
    live.viewers.discard(viewer)
    live.touch()
    await pc.close()
    return web.Response(status=200)


async def end_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.get(request.match_info["session"])
    await state.close(request.match_info["session"])
    return web.Response(status=200)


async def publish(request: web.Request) -> web.Response:
    """Publishes the session's stream once into a Janus VideoRoom (`serve --janus URL`); viewers then
    watch through Janus. Answers where: {janus, room, feed, watch_page}; a second call answers the same
    while the publication lives."""
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    if not state.settings.janus_url:
        raise error_response(
            web.HTTPConflict, "this server publishes to no SFU: start it with --janus http://HOST:8088/janus"
        )
    async with live.publishing:
        if live.publication is not None and not live.publication.alive:  # Janus restarted, or the link failed
            logger.warning("session %s: its Janus publication is gone; publishing it again", live.session.id)
            await live.publication.close()
            live.publication = None
        if live.publication is None:
            try:
                publication = await janus.publish(state, live, state.settings.janus_url)
            except janus.JanusError as err:
                logger.error("publishing session %s to Janus failed: %s", live.session.id, err)
                raise error_response(web.HTTPBadGateway, f"publishing to Janus failed: {err}") from err
            if live.session.closed:  # ended while it was being published: nobody else will close it
                await publication.close()
                raise error_response(web.HTTPNotFound, "no such session (it ended while being published)")
            live.publication = publication
    return web.json_response(live.publication.to_json())


async def ice_servers(request: web.Request) -> web.Response:
    """The ICE servers a client should use for its offer, in the browser's RTCConfiguration form, with
    a TURN credential of its own where the server issues them. A client that must relay asks first."""
    state = request.app[STATE]
    servers = state.ice_servers(f"client-{secrets.token_urlsafe(8)}")
    policy = "relay" if state.settings.ice.relay_only else "all"
    return web.json_response({"iceServers": as_json(servers), "iceTransportPolicy": policy})


async def no_trickle(request: web.Request) -> web.Response:
    """PATCH on a WHIP/WHEP resource (trickle ICE, RFC 9725 section 4.3): not supported, said plainly."""
    message = (
        "ICE trickle is not supported: this server gathers all its candidates before it answers; send an offer "
        "with all of yours (wait for ICE gathering to complete)"
    )
    raise web.HTTPMethodNotAllowed(
        "PATCH", ("DELETE",), text=json.dumps({"error": message}), content_type="application/json"
    )
