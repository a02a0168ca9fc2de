"""The HTTP API as an OpenAPI 3.1 document, served at /openapi.json (and used by the fuzz tests)."""

from __future__ import annotations

from lipstream import __version__

from .security import PROTECTED_ROUTES

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


def _operation(route: str, summary: str, responses: dict, **extra: object) -> dict:
    operation: dict = {"operationId": route, "summary": summary, "responses": responses} | extra
    if route in PROTECTED_ROUTES:
        operation["security"] = [{"bearer": []}]
        operation["responses"] = responses | _errors(401)
    return operation


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def openapi_document(tokens_required: bool) -> dict:
    created = {"description": "created", "headers": {"Location": {"schema": {"type": "string"}}}, "content": _SDP}
    paths = {
        "/offer": {
            "post": _operation(
                "offer",
                "Open a session: the peer sends its microphone and receives the avatar (aiortc's convention)",
                {"200": {"description": "the answer", **_json({"$ref": "#/components/schemas/Answer"})}}
                | _errors(400, 404, 429, 503),
                requestBody={"required": True, **_json({"$ref": "#/components/schemas/Offer"})},
            )
        },
        "/whip": {
            "post": _operation(
                "whip",
                "WHIP (RFC 9725) audio ingest: opens a session driven by the offer's audio",
                {"201": created} | _errors(400, 404, 415, 429, 503),
                parameters=[{"name": "avatar", "in": "query", "schema": {"type": "string"}}],
                requestBody={"required": True, "content": _SDP},
            )
        },
        "/whip/{session}": {
            "delete": _operation("whip-end", "End a WHIP session", _ENDED | _errors(404), parameters=[_SESSION])
        },
        "/whep/{watch}": {
            "post": _operation(
                "whep",
                "WHEP viewer of a session, addressed by its watch id",
                {"201": created} | _errors(400, 404, 415),
                parameters=[_WATCH],
                requestBody={"required": True, "content": _SDP},
            )
        },
        "/whep/{watch}/{viewer}": {
            "delete": _operation(
                "whep-end",
                "End a viewer",
                _ENDED | _errors(404),
                parameters=[_WATCH, {"name": "viewer", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/sessions": {
            "post": _operation(
                "session-create",
                "Open a session without a peer: audio by HTTP or WebSocket, viewers by WHEP",
                {"201": {"description": "created", **_json({"$ref": "#/components/schemas/Created"})}}
                | _errors(400, 404, 429, 503),
                requestBody={
                    "required": False,
                    **_json({"type": "object", "properties": {"avatar": {"type": "string"}}}),
                },
            )
        },
        "/sessions/{session}/audio": {
            "post": _operation(
                "audio",
                "Stream audio into a session: raw s16le PCM with ?rate=&channels=, or a 16-bit PCM WAV",
                {"200": {"description": "pushed", **_json({"$ref": "#/components/schemas/Pushed"})}}
                | _errors(400, 404, 415),
                parameters=[_SESSION, *_PCM_QUERY],
                requestBody={
                    "required": True,
                    "content": {
                        kind: {"schema": {"type": "string", "format": "binary"}}
                        for kind in ("audio/pcm", "application/octet-stream", "audio/wav")
                    },
                },
            )
        },
        "/sessions/{session}/interrupt": {
            "post": _operation(
                "interrupt",
                "Drop queued audio and pending frames; idle within one frame",
                {"200": {"description": "interrupted", **_json(_OBJECT)}} | _errors(404),
                parameters=[_SESSION],
            )
        },
        "/sessions/{session}/ws": {
            "get": _operation(
                "audio-socket",
                "WebSocket audio: binary s16le PCM messages at ?rate=; text 'end' or 'interrupt'",
                {"101": {"description": "switching protocols"}} | _errors(400, 404),
                parameters=[_SESSION, *_PCM_QUERY],
            )
        },
        "/sessions/{session}": {
            "delete": _operation("session-end", "End a session", _ENDED | _errors(404), parameters=[_SESSION])
        },
        "/health": {"get": _operation("health", "Status", {"200": {"description": "ok", **_json(_OBJECT)}})},
        "/openapi.json": {
            "get": _operation("openapi", "This document", {"200": {"description": "OpenAPI 3.1", **_json(_OBJECT)}})
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics",
                {"200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        },
        "/avatars": {"get": _operation("avatars", "Avatars", {"200": {"description": "names", **_json(_OBJECT)}})},
        "/samples": {
            "get": _operation("samples", "Speech samples", {"200": {"description": "names", **_json(_OBJECT)}})
        },
        "/samples/{name}": {
            "get": _operation(
                "sample",
                "One speech sample (WAV)",
                {"200": {"description": "audio/wav"}} | _errors(404),
                parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
    }
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
            },
        },
    }
