"""Access control and input limits of the HTTP API.

Bearer tokens (RFC 6750, as WHIP and WHEP use them) guard every route that is not declared public
(routes.py): whatever creates, drives, watches or ends a session, and any route added later and not
thought about. The page, avatars, samples, health, metrics and the API description are public. Tokens
are compared in constant time and never logged or echoed.

An SDP offer is checked before aiortc sees it: size, line syntax, number of media sections, and a
codec this server can use in the direction the endpoint needs (audio it can decode for ingest, video
it can encode for viewers).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 8
AUDIO_CODECS = ("opus", "pcmu", "pcma")  # what aiortc decodes
VIDEO_CODECS = ("vp8", "h264")  # what aiortc encodes
TOKENS_ENV = "LIPSTREAM_TOKENS"
_SDP_LINE = re.compile(r"^[a-z]=[^\r\n]*$")
_MEDIA = re.compile(r"^m=(\w+) \d+(?:/\d+)? \S+ ?(.*)$")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w.-]+)/", re.IGNORECASE)


class InvalidTokensError(ValueError):
    """A token file or variable that cannot be used."""


def error_response(status: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json", headers=headers or None)


def load_tokens(path: str | Path | None = None) -> tuple[str, ...]:
    """Tokens from a file (one per line, '#' comments) and/or $LIPSTREAM_TOKENS (comma separated)."""
    tokens: list[str] = []
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise InvalidTokensError(f"cannot read the token file {path}: {err.strerror}") from err
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    tokens += [t.strip() for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]
    short = [t for t in tokens if len(t) < 16 or not t.isascii() or any(c.isspace() for c in t)]
    if short:
        raise InvalidTokensError(
            f"{len(short)} token(s) are shorter than 16 characters or not printable ASCII; "
            "make long random ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return tuple(tokens)


def is_authorised(header: str, tokens: tuple[str, ...]) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    offered = value.strip().encode()
    found = False
    for token in tokens:  # every token is compared, so the time does not tell which one nearly matched
        found |= hmac.compare_digest(offered, token.encode())
    return found


def auth_middleware(tokens: tuple[str, ...], public: frozenset[str]) -> Callable:
    """With tokens, every request needs one unless its route's name is in `public` (closed by default:
    an unnamed route, or an unknown path, needs one too)."""

    @web.middleware
    async def check_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if tokens and route.name not in public and not preflight:
            header = request.headers.get("Authorization", "")
            if not is_authorised(header, tokens):
                challenge = 'Bearer realm="lipstream"' + (', error="invalid_token"' if header else "")
                raise error_response(
                    web.HTTPUnauthorized,
                    "this server needs a bearer token: send the header 'Authorization: Bearer <token>'",
                    **{"WWW-Authenticate": challenge},
                )
        return await handler(request)

    return check_token


def check_sdp(text: str, need_audio_in: bool, need_video_out: bool) -> None:
    """Raises a 400 that says what is wrong with an SDP offer, before aiortc parses it."""
    if not text or len(text.encode()) > MAX_SDP_BYTES or not text.startswith("v=0"):
        raise error_response(
            web.HTTPBadRequest, f"expected an SDP offer (starting with 'v=0', at most {MAX_SDP_BYTES} bytes)"
        )
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    bad = next((n for n, line in enumerate(lines, 1) if not _SDP_LINE.match(line)), None)
    if bad is not None:
        raise error_response(web.HTTPBadRequest, f"SDP line {bad} is not '<letter>=<value>'")
    sections: list[tuple[str, set[str]]] = []  # (media kind, codec names)
    for line in lines:
        media = _MEDIA.match(line) if line.startswith("m=") else None
        if line.startswith("m=") and media is None:
            raise error_response(web.HTTPBadRequest, f"malformed media line {line[:60]!r}")
        if media is not None:
            sections.append((media.group(1).lower(), set()))
        elif sections and (rtpmap := _RTPMAP.match(line)):
            sections[-1][1].add(rtpmap.group(2).lower())
    if not sections or len(sections) > MAX_MEDIA_SECTIONS:
        raise error_response(
            web.HTTPBadRequest, f"an offer needs 1 to {MAX_MEDIA_SECTIONS} media sections; this one has {len(sections)}"
        )
    unknown = sorted({kind for kind, _ in sections} - {"audio", "video", "application"})
    if unknown:
        raise error_response(web.HTTPBadRequest, f"unsupported media kind(s) {unknown}: offer audio and/or video")
    for needed, kind, codecs, role in (
        (need_audio_in, "audio", AUDIO_CODECS, "send the avatar its audio"),
        (need_video_out, "video", VIDEO_CODECS, "receive the avatar's video"),
    ):
        if needed and not any(k == kind and names & set(codecs) for k, names in sections):
            raise error_response(
                web.HTTPBadRequest,
                f"the offer has no {kind} section with a codec this server supports ({', '.join(codecs)}); "
                f"it needs one to {role}",
            )
