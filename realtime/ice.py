"""The ICE servers (STUN, TURN) a session's peers use, and short-lived TURN credentials for them.

TURN runs on coturn (Debian's `coturn`), never on a relay of our own. With a shared secret
(`serve --turn-secret-file`, the same as coturn's `static-auth-secret` with `use-auth-secret`), every
session and every client gets its own credential in coturn's REST-API scheme: the username is
`<expiry, Unix seconds>:<name>`, the password base64(HMAC-SHA1(secret, username)). coturn checks both
and refuses the username once its time has passed, so a leaked credential dies on its own and the
secret never leaves the server. Without a secret, `--ice-username/--ice-credential` are sent as they are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

DEFAULT_TURN_TTL_S = 12 * 3600  # a presenter's whole show; coturn refuses refreshes past the expiry


class IceSettingsError(ValueError):
    """STUN/TURN options that cannot work together; the message says what to change."""


def read_turn_secret(path: str | None, environment: str | None) -> str | None:
    """coturn's shared secret from a file (first) or the environment; None when neither gives one."""
    if not path:
        return environment or None
    try:
        secret = Path(path).read_text().strip()
    except OSError as err:
        raise IceSettingsError(f"cannot read the TURN secret file {path}: {err.strerror}") from err
    if not secret:
        raise IceSettingsError(f"{path} is empty: it should hold coturn's static-auth-secret")
    return secret


@dataclass(frozen=True)
class IceSettings:
    urls: tuple[str, ...] = ()  # stun:... and turn:/turns:... addresses
    username: str | None = None  # static TURN credentials, used when there is no secret
    credential: str | None = None
    turn_secret: str | None = None  # coturn's static-auth-secret: per-session credentials
    turn_ttl_s: int = DEFAULT_TURN_TTL_S
    relay_only: bool = False  # the server's own peers use relayed candidates only (its address stays hidden)

    def __post_init__(self) -> None:
        if self.turn_ttl_s <= 0:
            raise IceSettingsError(f"the TURN credential lifetime must be positive seconds, not {self.turn_ttl_s}")
        if self.relay_only and not any(_is_turn(url) for url in self.urls):
            raise IceSettingsError("relay-only ICE needs a TURN server: add --ice-server turn:HOST:PORT")

    def servers(self, name: str, now: float) -> list[RTCIceServer]:
        """The ICE servers for one session or client called `name`, with credentials issued `now`
        (Unix seconds) where a secret is set."""
        if not self.urls:
            return []
        username, credential = self.username, self.credential
        if self.turn_secret is not None:
            username, credential = turn_credential(self.turn_secret, name, int(now) + self.turn_ttl_s)
        stun = [u for u in self.urls if not _is_turn(u)]
        turn = [u for u in self.urls if _is_turn(u)]
        servers = [RTCIceServer(stun)] if stun else []
        if turn:
            servers.append(RTCIceServer(turn, username=username, credential=credential))
        return servers

    def configuration(self, name: str, now: float) -> RTCConfiguration:
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=self.servers(name, now) or None, iceTransportPolicy=policy)


def _is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def turn_credential(secret: str, name: str, expires: int) -> tuple[str, str]:
    """coturn's REST-API credential: (username, password) valid until `expires` (Unix seconds)."""
    if ":" in name:
        raise ValueError(f"a TURN credential's name cannot hold ':' (got {name!r})")
    username = f"{expires}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def as_json(servers: list[RTCIceServer]) -> list[dict]:
    """The browser's RTCIceServer dictionaries (what `new RTCPeerConnection({iceServers})` takes)."""
    out = []
    for server in servers:
        entry: dict = {"urls": server.urls}
        if server.username is not None:
            entry |= {"username": server.username, "credential": server.credential}
        out.append(entry)
    return out


def link_header(servers: list[RTCIceServer]) -> dict[str, str]:
    """The ICE servers as WHIP/WHEP `Link` headers (RFC 9725, section 4.6)."""
    links = []
    for server in servers:
        for url in [server.urls] if isinstance(server.urls, str) else server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username:
                link += f'; username="{server.username}"; credential="{server.credential}"; credential-type="password"'
            links.append(link)
    return {"Link": ", ".join(links)} if links else {}
