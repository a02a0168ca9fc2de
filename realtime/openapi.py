"""The HTTP API as an OpenAPI 3.1 document, served at /openapi.json (and used by the fuzz tests)."""

from __future__ import annotations

from lipstream import __version__

from .ingest import ACCEPTED, ENCODED_TYPES, MULAW_TYPES, RAW_TYPES, WAV_TYPES
from .routes import Route

_ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
_ERROR = {"description": "what was wrong and what to do", "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
_ENDED = {"200": {"description": "ended"}}
_OBJECT = {"type": "object"}
_SDP = {"application/sdp": {"schema": {"type": "string", "maxLength": 65536}}}
_SESSION = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}
_WATCH = {"name": "watch", "in": "path", "required": True, "schema": {"type": "string"}}
_PCM_QUERY = [
    {"name": "rate", "in": "query", "schema": {"type": "integer", "minimum": 8000, "maximum": 192000}},
    {"name": "channels", "in": "query", "schema": {"type": "integer", "enum": [1, 2]}},
]


def _errors(*codes: int) -> dict:
    return {str(code): _ERROR for code in codes}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


_CREATED = {"description": "created", "headers": {"Location": {"schema": {"type": "string"}}}, "content": _SDP}

# What each route takes and answers, by route name; its method, path, summary and protection come from
# the route table (server.ROUTES).
OPERATIONS: dict[str, dict] = {
    "offer": {
        "responses": {"200": {"description": "the answer", **_json({"$ref": "#/components/schemas/Answer"})}}
        | _errors(400, 404, 429, 503),
        "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/Offer"})},
    },
    "whip": {
        "responses": {"201": _CREATED} | _errors(400, 404, 415, 429, 503),
        "parameters": [{"name": "avatar", "in": "query", "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": _SDP},
    },
    "whip-end": {"responses": _ENDED | _errors(404), "parameters": [_SESSION]},
    "whip-trickle": {"responses": _errors(405), "parameters": [_SESSION]},
    "whep-trickle": {
        "responses": _errors(405),
        "parameters": [_WATCH, {"name": "viewer", "in": "path", "required": True, "schema": {"type": "string"}}],
    },
    "whep": {
        "responses": {"201": _CREATED} | _errors(400, 404, 415),
        "parameters": [_WATCH],
        "requestBody": {"required": True, "content": _SDP},
    },
    "whep-end": {
        "responses": _ENDED | _errors(404),
        "parameters": [_WATCH, {"name": "viewer", "in": "path", "required": True, "schema": {"type": "string"}}],
    },
    "session-create": {
        "responses": {"201": {"description": "created", **_json({"$ref": "#/components/schemas/Created"})}}
        | _errors(400, 404, 429, 503),
        "requestBody": {"required": False, **_json({"type": "object", "properties": {"avatar": {"type": "string"}}})},
    },
    "audio": {
        "responses": {"200": {"description": "pushed", **_json({"$ref": "#/components/schemas/Pushed"})}}
        | _errors(400, 404, 413, 415),
        "parameters": [_SESSION, *_PCM_QUERY],
        "requestBody": {
            "required": True,
            "description": ACCEPTED,
            "content": {
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in (*WAV_TYPES, *RAW_TYPES, *MULAW_TYPES, *ENCODED_TYPES)
            },
        },
    },
    "speak": {
        "responses": {
            "200": {
                "description": "spoken into the session",
                **_json(
                    {"type": "object", "properties": {"seconds": {"type": "number"}, "provider": {"type": "string"}}}
                ),
            }
        }
        | _errors(400, 404, 502),
        "parameters": [_SESSION],
        "requestBody": {
            "required": True,
            **_json(
                {
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        "text": {"type": "string", "minLength": 1, "maxLength": 2000},
                        "voice": {"type": "string"},
                    },
                }
            ),
        },
    },
    "interrupt": {
        "responses": {"200": {"description": "interrupted", **_json(_OBJECT)}} | _errors(404),
        "parameters": [_SESSION],
    },
    "audio-socket": {
        "responses": {"101": {"description": "switching protocols"}} | _errors(400, 404),
        "parameters": [_SESSION, *_PCM_QUERY],
    },
    "frames": {
        "description": "WebSocket of the session's composed frames, for clients that are not WebRTC peers (a voice "
        "agent's pipeline). Each frame is one binary message: an 18-byte header (struct `<4sIBBBxHHH`: `LSF1`, "
        "frame number, kind 0 idle / 1 blend / 2 speech, format 0 RGB / 1 JPEG, flags (1: utterance audio), pad, "
        "width, height, audio samples), the picture, then the frame's 40 ms of s16le mono audio at 48 kHz. "
        "Playback events arrive as JSON text messages. The client library is `lipstream-agents`.",
        "responses": {"101": {"description": "switching protocols"}} | _errors(400, 404),
        "parameters": [
            _SESSION,
            {"name": "format", "in": "query", "schema": {"enum": ["jpeg", "rgb"], "default": "jpeg"}},
        ],
    },
    "session-end": {"responses": _ENDED | _errors(404), "parameters": [_SESSION]},
    "publish": {
        "description": "Publishes the session's stream once into a Janus VideoRoom of its own (`serve --janus URL`); "
        "viewers subscribe to the feed through Janus. Asking again answers the same room and feed.",
        "responses": {
            "200": {
                "description": "where viewers find the stream",
                **_json(
                    {
                        "type": "object",
                        "properties": {
                            "janus": {"type": "string"},
                            "room": {"type": "integer"},
                            "feed": {"type": "integer"},
                            "watch_page": {"type": "string", "description": "this server's viewer page for it"},
                        },
                    }
                ),
            }
        }
        | _errors(404, 409, 502),
        "parameters": [_SESSION],
    },
    "ice-servers": {
        "description": "STUN/TURN servers for a client's RTCPeerConnection; with a TURN secret set, a TURN "
        "credential of the client's own that expires (coturn's REST-API scheme).",
        "responses": {
            "200": {
                "description": "an RTCConfiguration",
                **_json(
                    {
                        "type": "object",
                        "properties": {
                            "iceServers": {"type": "array", "items": _OBJECT},
                            "iceTransportPolicy": {"enum": ["all", "relay"]},
                        },
                    }
                ),
            }
        },
    },
    "events": {
        "description": "Server-sent events, one per playback change: `event: speech_started` when the first frame "
        "of an utterance's audio is played, `event: speech_ended` when its audio has all been played or was "
        "interrupted, `event: idle` at the first frame that shows the template untouched again. Each `data:` "
        "line is a PlaybackEvent. The same events arrive on the audio WebSocket and on the peer's data channel.",
        "responses": {
            "200": {
                "description": "an endless stream of events",
                "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/PlaybackEvent"}}},
            }
        }
        | _errors(404),
        "parameters": [_SESSION],
    },
    "health": {"responses": {"200": {"description": "ok", **_json(_OBJECT)}}},
    "openapi": {"responses": {"200": {"description": "OpenAPI 3.1", **_json(_OBJECT)}}},
    "metrics": {
        "responses": {"200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}
    },
    "avatars": {"responses": {"200": {"description": "names", **_json(_OBJECT)}}},
    "samples": {"responses": {"200": {"description": "names", **_json(_OBJECT)}}},
    "sample": {
        "responses": {"200": {"description": "audio/wav"}} | _errors(404),
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    },
}


def openapi_document(tokens_required: bool, routes: tuple[Route, ...]) -> dict:
    """The document for `routes`; every route of the API must have its entry in OPERATIONS."""
    paths: dict[str, dict] = {}
    for route in routes:
        if not route.api:
            continue
        operation = {"operationId": route.name, "summary": route.summary} | OPERATIONS[route.name]
        if not route.public:
            operation["security"] = [{"bearer": []}]
            operation["responses"] = operation["responses"] | _errors(401)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lipstream",
            "version": __version__,
            "description": "Real-time lip-sync avatar server. "
            + ("Bearer tokens: required where security is marked." if tokens_required else "No tokens configured."),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Offer": {
                    "type": "object",
                    "required": ["sdp", "type"],
                    "properties": {
                        "sdp": {"type": "string", "maxLength": 65536},
                        "type": {"const": "offer"},
                        "avatar": {"type": "string"},
                    },
                },
                "Answer": {
                    "type": "object",
                    "properties": {
                        "sdp": {"type": "string"},
                        "type": {"const": "answer"},
                        "session_id": {"type": "string"},
                        "watch_url": {"type": "string"},
                    },
                },
                "Created": {
                    "type": "object",
                    "properties": {"session_id": {"type": "string"}, "watch_url": {"type": "string"}},
                },
                "Pushed": {
                    "type": "object",
                    "properties": {"seconds": {"type": "number"}, "throttled_seconds": {"type": "number"}},
                },
                "PlaybackEvent": {
                    "type": "object",
                    "required": ["event", "frame"],
                    "properties": {
                        "event": {"enum": ["speech_started", "speech_ended", "idle"]},
                        "frame": {"type": "integer", "description": "session frame; its RTP timestamp is 3600 x frame"},
                        "position_s": {
                            "type": "number",
                            "description": "speech_ended: seconds of the utterance played",
                        },
                        "interrupted": {"type": "boolean", "description": "speech_ended: cut short by an interrupt"},
                    },
                },
            },
        },
    }
