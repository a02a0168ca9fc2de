"""`lipstream serve`, `cluster` and `talk`: the server, several of them behind HAProxy, and a client."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lipstream.realtime.ice import IceSettings
from lipstream.realtime.settings import ServerSettings

from .args import (
    add_model_options,
    defaults,
    instance_name,
    non_negative_int,
    port_number,
    positive_int,
    runtime_from_options,
)

SERVER = defaults(ServerSettings)


def serve_settings(args: argparse.Namespace) -> ServerSettings:
    """`lipstream serve`'s options as the server's settings (checked before any model loads)."""
    from lipstream.realtime.ice import read_turn_secret
    from lipstream.realtime.security import load_tokens
    from lipstream.realtime.tts import make_provider

    given = {  # options left out keep ServerSettings' defaults
        "instance": args.instance,
        "agent_port": args.agent_port,
        "janus_url": args.janus,
    }
    return ServerSettings(
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        jitter_frames=args.jitter_frames,
        measured_admission=args.admission == "measured",
        tokens=load_tokens(args.token_file),
        ice=IceSettings(
            urls=tuple(args.ice_server),
            username=args.ice_username,
            credential=args.ice_credential,
            turn_secret=read_turn_secret(args.turn_secret_file, os.environ.get("LIPSTREAM_TURN_SECRET")),
            turn_ttl_s=args.turn_ttl,
            relay_only=args.ice_relay_only,
        ),
        tts=make_provider(args.tts, args.tts_url, os.environ.get("LIPSTREAM_TTS_KEY") or None),
        cors_origins=tuple(args.cors_origin),
        agent_host=args.host,
        trusted_proxies=tuple(args.trust_proxy),
        **{name: value for name, value in given.items() if value is not None},
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from lipstream.realtime.server import create_app

    settings = serve_settings(args)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    runtime = runtime_from_options(args, samples_dir=args.samples)
    tokens = settings.tokens
    print(
        f"serving avatar {runtime.assets.avatar.name!r} with {runtime.engine.label} ({runtime.engine.model_id}) "
        f"on http://{args.host}:{args.port}"
        + (f"; {len(tokens)} bearer token(s) required to open, drive or watch sessions" if tokens else "")
    )
    web.run_app(create_app(runtime, settings), host=args.host, port=args.port, print=None)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import time

    from lipstream.deploy.haproxy import LocalCluster

    serve_args = tuple(a for a in args.serve_args if a != "--")
    with LocalCluster(args.port, args.processes, serve_args) as cluster:
        print(f"{args.processes} serve processes behind HAProxy on {cluster.url}; configuration: {cluster.config}")
        try:
            while cluster.haproxy.poll() is None:
                cluster.restart_exited()
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
    print(f"HAProxy exited; its log is in {cluster.folder}", file=sys.stderr)
    return 1


def cmd_talk(args: argparse.Namespace) -> int:
    import asyncio

    from lipstream.realtime.talk import TalkError, say, talk

    token = os.environ.get("LIPSTREAM_TOKEN") or None  # the server's bearer token, when it needs one
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    try:
        if args.text:
            seconds = asyncio.run(say(args.server, args.text, args.voice, args.session, args.avatar, token))
        else:
            file = Path(args.file) if args.file else None
            seconds = asyncio.run(talk(args.server, file, args.session, args.avatar, token, device))
    except KeyboardInterrupt:
        print("stopped")
        return 0
    except TalkError as err:
        print(f"lipstream talk: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # connection refused, unreachable host
        print(
            f"lipstream talk: error: cannot reach {args.server} ({err}); is `lipstream serve` running?", file=sys.stderr
        )
        return 2
    print(f"sent {seconds:.1f} s of audio")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve an avatar over WebRTC (default: the embedded avatar on the CPU)")
    serve.add_argument("--avatar", help="avatar name or folder (default: the embedded default avatar)")
    add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8080)
    serve.add_argument("--samples", help="folder of 16-bit WAV speech samples the browser page may play")
    serve.add_argument(
        "--jitter-frames",
        type=non_negative_int,
        default=SERVER["jitter_frames"],
        help="input frames buffered before playback (%(default)s; 0 saves 40 ms)",
    )
    serve.add_argument(
        "--max-sessions",
        type=positive_int,
        default=SERVER["max_sessions"],
        help="admission limit; more get 503 (default %(default)s)",
    )
    serve.add_argument(
        "--max-sessions-per-client",
        type=positive_int,
        default=SERVER["max_sessions_per_client"],
        help="per remote address; more get 429 (default %(default)s)",
    )
    serve.add_argument(
        "--admission",
        choices=("measured", "count"),
        default="measured" if SERVER["measured_admission"] else "count",
        help="measured: also refuse a session (503) when the machine's spare CPU could not hold it at 25 fps; "
        "count: only --max-sessions (default %(default)s)",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server for the server's ICE candidates, e.g. turn:turn.example.com:3478 (repeatable)",
    )
    serve.add_argument("--ice-username", help="TURN username (static; see --turn-secret-file for per-session ones)")
    serve.add_argument("--ice-credential", help="TURN password")
    serve.add_argument(
        "--turn-secret-file",
        help="coturn's static-auth-secret (use-auth-secret): every session and client gets its own short-lived "
        "TURN credential (also read from $LIPSTREAM_TURN_SECRET)",
    )
    serve.add_argument(
        "--turn-ttl",
        type=positive_int,
        default=IceSettings.turn_ttl_s,
        metavar="SECONDS",
        help="TURN credential lifetime (default %(default)s s)",
    )
    serve.add_argument(
        "--ice-relay-only", action="store_true", help="the server's peers use TURN relays only (hides its address)"
    )
    serve.add_argument(
        "--token-file",
        help="bearer tokens, one per line, required to open, drive, watch or end sessions "
        "(also read from $LIPSTREAM_TOKENS, comma separated)",
    )
    serve.add_argument(
        "--tts",
        choices=("espeak", "openai"),
        default="espeak",
        help="who speaks the text of POST /sessions/{id}/speak: the local espeak-ng (default), or an "
        "OpenAI-compatible /v1/audio/speech server at --tts-url (key in $LIPSTREAM_TTS_KEY)",
    )
    serve.add_argument("--tts-url", help="base address of the OpenAI-compatible speech server")
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from this origin (e.g. https://app.example.com, or *) call the API, WHIP and WHEP; repeatable",
    )
    serve.add_argument(
        "--instance",
        type=instance_name,
        help="this process's name behind a load balancer: it starts every session id (see lipstream cluster)",
    )
    serve.add_argument(
        "--agent-port",
        type=port_number,
        help="answer HAProxy's agent check here: ready with a weight, or drain",
    )
    serve.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a load balancer's address whose X-Forwarded-For names the client (repeatable)",
    )
    serve.add_argument(
        "--janus",
        metavar="URL",
        help="Janus's HTTP API (e.g. http://127.0.0.1:8088/janus): POST /sessions/{id}/publish fans a session "
        "out through a VideoRoom there",
    )
    serve.set_defaults(func=cmd_serve)

    cluster = sub.add_parser(
        "cluster", help="several serve processes behind Debian's HAProxy on this machine (see the README)"
    )
    cluster.add_argument("--processes", type=positive_int, default=2, help="serve processes (default 2)")
    cluster.add_argument(
        "--port", type=port_number, default=8080, help="HAProxy's port; process i serves on port+i (default 8080)"
    )
    cluster.add_argument(
        "serve_args", nargs=argparse.REMAINDER, help="after --: options for every serve process (e.g. --engine)"
    )
    cluster.set_defaults(func=cmd_cluster)

    talk = sub.add_parser("talk", help="stream the local microphone (or a WAV file) to a running server")
    talk.add_argument("--server", default="http://127.0.0.1:8080", help="the server (default %(default)s)")
    talk.add_argument("--session", help="drive this session (default: open one, and end it afterwards)")
    talk.add_argument("--avatar", help="avatar of the session it opens")
    talk.add_argument("--file", help="a WAV file instead of the microphone, sent in real time")
    talk.add_argument("--device", help="input device name or number (python -m sounddevice lists them)")
    talk.add_argument("--text", help="say this through the server's TTS provider instead of sending audio")
    talk.add_argument("--voice", help="with --text: the provider's voice (espeak-ng: en, de, fr, ...)")
    talk.set_defaults(func=cmd_talk)
