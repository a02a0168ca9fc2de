"""`lipstream serve`: the aiohttp application (built by `create_app`, state in typed app keys), split by
job: the session registry and admission (registry.py), signalling (signaling.py), audio ingest
(ingest.py), the frames WebSocket for agents' pipelines (frames.py), and here the app's wiring, the
small read-only routes and the route table.

The routes are declared once, in ROUTES (method, path, handler, name, summary, public): the router,
the token check and /openapi.json are built from that table. In short: POST /offer (aiortc's
convention), WHIP ingest and WHEP viewers, sessions without a peer fed by HTTP or WebSocket audio,
interrupt, health, Prometheus metrics, and the browser page with its avatars and samples.

With tokens configured, every route not declared public needs `Authorization: Bearer <token>`
(security.py, routes.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from lipstream.web_client import ROOT as WEB_CLIENT

from . import video_encoder
from .agent import start_agent
from .clock import Clock, MonotonicClock
from .frames import frame_socket
from .ingest import audio_socket, push_audio, speak
from .log import logger, spawn
from .openapi import openapi_document
from .registry import STATE, ServerState
from .routes import Route, add_routes, allow_cors, public_names
from .runtime import Runtime
from .security import MAX_SDP_BYTES, auth_middleware, error_response
from .settings import ServerSettings
from .signaling import (
    create_session,
    end_session,
    end_whep,
    ice_servers,
    no_trickle,
    offer,
    publish,
    whep,
    whip,
)

__all__ = ["ROUTES", "STATE", "ServerSettings", "ServerState", "create_app"]


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_CLIENT / "index.html")


async def watch_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_CLIENT / "watch.html")


async def list_avatars(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(request.app[STATE].runtime.avatar_names)
    return web.json_response({"avatars": names})


def _samples(state: ServerState) -> dict[str, Path]:
    folder = state.runtime.samples_dir
    return {p.name: p for p in sorted(folder.glob("*.wav"))} if folder and folder.is_dir() else {}


async def list_samples(request: web.Request) -> web.Response:
    return web.json_response({"samples": list(await asyncio.to_thread(_samples, request.app[STATE]))})


async def sample(request: web.Request) -> web.FileResponse:
    files = await asyncio.to_thread(_samples, request.app[STATE])
    path = files.get(request.match_info["name"])  # only names listed: no path reaches outside the folder
    if path is None:
        raise error_response(web.HTTPNotFound, "no such sample")
    return web.FileResponse(path)


async def interrupt(request: web.Request) -> web.Response:
    request.app[STATE].get(request.match_info["session"]).interrupt()
    return web.json_response({"interrupted": True})


SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet event stream


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the session's PlaybackEvents (speech_started, speech_ended, idle) as they
    happen, `event: <type>` with the JSON in `data:`, until the session ends or the client leaves."""
    live = request.app[STATE].get(request.match_info["session"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    queue = live.session.subscribe()
    quiet = 0.0
    try:
        while not live.session.closed:
            try:
                event = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                quiet += 1.0
                if quiet >= SSE_KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                continue
            quiet = 0.0
            await response.write(f"event: {event.type}\ndata: {json.dumps(event.to_json())}\n\n".encode())
    except ConnectionResetError:
        pass  # the client went away
    finally:
        live.session.unsubscribe(queue)
    return response


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    runtime = state.runtime
    refusal = state.refusal()
    return web.json_response(
        {
            "status": "ok",
            "instance": state.settings.instance,
            "sessions": len(state.live),
            "max_sessions": state.settings.max_sessions,
            "admission": "measured" if state.settings.measured_admission else "count",
            "accepting": refusal is None,  # would a new session be admitted now?
            "refusal": refusal,  # why not, when it would not
            "avatar": runtime.assets.avatar.name,
            "pipeline_delay_ms": round(state.pipeline_delay_ms, 1),
            "style_smoothing": state.scheduler.style_smoothing,
            "motion_gain": state.scheduler.motion_gain,
            "voice_warp": "auto" if runtime.voice_warp is None else runtime.voice_warp,
            "voice_norm": runtime.voice_norm is not None,  # voices shifted to the learnt voice's mean spectrum
            "keep_template": runtime.keep_template,  # compositing keeps what the audio does not change
            "engine": runtime.engine.kind,
            "engine_variant": runtime.engine.variant,  # ONNX Runtime's optimisation level; null elsewhere
            "engine_variant_choice": runtime.engine.variant_choice,  # what the start-up choice timed (auto)
            "model_id": runtime.engine.model_id,
            "video_encoder": "vp8, denoiser off" if video_encoder.installed() else "aiortc's vp8",
        }
    )


async def api_description(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(bool(request.app[STATE].settings.tokens), ROUTES))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[STATE].runtime.metrics.render(), content_type="text/plain")


ROUTES = (
    Route("POST", "/offer", offer, "offer", "Open a session: the peer sends its microphone and receives the avatar"),
    Route("POST", "/whip", whip, "whip", "WHIP (RFC 9725) audio ingest: opens a session driven by the offer's audio"),
    Route("DELETE", "/whip/{session}", end_session, "whip-end", "End a WHIP session"),
    Route("PATCH", "/whip/{session}", no_trickle, "whip-trickle", "ICE trickle: not supported (405)"),
    Route("POST", "/whep/{watch}", whep, "whep", "WHEP viewer of a session, addressed by its watch id"),
    Route("DELETE", "/whep/{watch}/{viewer}", end_whep, "whep-end", "End a viewer"),
    Route("PATCH", "/whep/{watch}/{viewer}", no_trickle, "whep-trickle", "ICE trickle: not supported (405)"),
    Route("POST", "/sessions", create_session, "session-create", "Open a session without a peer (audio by HTTP/WS)"),
    Route("POST", "/sessions/{session}/audio", push_audio, "audio", "Stream PCM or WAV audio into a session"),
    Route("POST", "/sessions/{session}/interrupt", interrupt, "interrupt", "Drop queued audio and pending frames"),
    Route("POST", "/sessions/{session}/speak", speak, "speak", "Speak text into a session through the TTS provider"),
    Route("GET", "/sessions/{session}/ws", audio_socket, "audio-socket", "WebSocket audio: PCM, 'end', 'interrupt'"),
    Route(
        "GET", "/sessions/{session}/frames", frame_socket, "frames", "WebSocket of the composed frames with their audio"
    ),
    Route("POST", "/sessions/{session}/publish", publish, "publish", "Publish the stream once into a Janus room"),
    Route("DELETE", "/sessions/{session}", end_session, "session-end", "End a session"),
    Route("GET", "/sessions/{session}/events", events, "events", "Playback events (server-sent events)"),
    Route("GET", "/ice-servers", ice_servers, "ice-servers", "ICE servers for a client's offer, with credentials"),
    Route("GET", "/openapi.json", api_description, "openapi", "This document", public=True),
    Route("GET", "/", index, "page", "The browser demo client", public=True, api=False),
    Route("GET", "/watch", watch_page, "watch-page", "The viewer page (Janus or WHEP)", public=True, api=False),
    Route("GET", "/avatars", list_avatars, "avatars", "Avatars that can be chosen", public=True),
    Route("GET", "/samples", list_samples, "samples", "Speech samples the page can play", public=True),
    Route("GET", "/samples/{name}", sample, "sample", "One speech sample (WAV)", public=True),
    Route("GET", "/health", health, "health", "Status", public=True),
    Route("GET", "/metrics", metrics, "metrics", "Prometheus metrics", public=True),
)


def create_app(runtime: Runtime, settings: ServerSettings | None = None, clock: Clock | None = None) -> web.Application:
    settings = settings or ServerSettings()
    if not video_encoder.install():
        logger.error(
            "this aiortc builds its encoders elsewhere: viewers get aiortc's own VP8 encoder, whose "
            "denoiser blurs the mouth and costs about 1 ms a frame more; pin aiortc as pyproject.toml does"
        )
    public = public_names(ROUTES) | {"static"}
    app = web.Application(client_max_size=MAX_SDP_BYTES, middlewares=[auth_middleware(settings.tokens, public)])
    state = ServerState(runtime, settings, clock or MonotonicClock())
    app[STATE] = state
    add_routes(app, ROUTES)
    app.router.add_static("/static", WEB_CLIENT, name="static")
    if settings.cors_origins:
        allow_cors(app, settings.cors_origins)

    background: list[asyncio.Task] = []
    agent: list[asyncio.Server] = []  # the load balancer's agent check (agent.py), when asked for

    async def start(_app: web.Application) -> None:
        state.scheduler.start()
        background.append(spawn(state.reap(), "session-reaper"))
        background.append(spawn(state.measure(), "capacity-monitor"))
        if settings.agent_port:
            agent.append(await start_agent(state, settings.agent_host, settings.agent_port))

    async def stop(_app: web.Application) -> None:
        for task in background:
            task.cancel()
        for server in agent:
            server.close()
        for session_id in list(state.live):
            await state.close(session_id)
        await state.scheduler.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
