"""A route of the HTTP API, declared once: the router, the token check and /openapi.json are all built
from the same table (`server.ROUTES`), so a route cannot be served without appearing in the others.

Closed by default: with tokens configured, every route needs `Authorization: Bearer <token>` unless it
is declared `public`. Routes that create, drive, watch or end a session are never public.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST or DELETE
    path: str  # aiohttp's form: /sessions/{session}
    handler: Handler
    name: str  # the aiohttp route name and the OpenAPI operationId
    summary: str  # one line for /openapi.json
    public: bool = False  # True: served without a token
    api: bool = True  # False: not part of the API (the browser page), left out of /openapi.json


def add_routes(app: web.Application, routes: tuple[Route, ...]) -> None:
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise ValueError(f"route names must be unique: {sorted(n for n in names if names.count(n) > 1)}")
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)


# What a page on another origin may read of our answers: where a WHIP/WHEP resource is, its ICE servers.
EXPOSED_HEADERS = ("Location", "Link", "X-Session-Id", "X-Watch-Url", "Retry-After")


def allow_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Lets pages from `origins` ("*": any) call every route (aiohttp-cors answers the preflights).
    Tokens still guard what they guard: a preflight carries none, the request itself must."""
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False, expose_headers=EXPOSED_HEADERS, allow_headers=("Authorization", "Content-Type")
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        if route.name != "static" and route.method != "HEAD":
            cors.add(route)


def public_names(routes: tuple[Route, ...]) -> frozenset[str]:
    return frozenset(r.name for r in routes if r.public)
