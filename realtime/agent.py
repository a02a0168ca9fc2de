"""HAProxy's agent check, answered by a serve process (`serve --agent-port`): HAProxy connects, reads
one line, and sets the process's weight from it. How several processes are deployed behind HAProxy:
deploy/haproxy.py and the README."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .log import logger

if TYPE_CHECKING:
    from .registry import ServerState


def agent_reply(state: ServerState) -> str:
    """The line HAProxy's agent check reads (HAProxy's agent protocol): drain while a new session would
    be refused, otherwise up with a weight that is the share of sessions still free."""
    refusal = state.refusal()
    if refusal is not None:
        return "drain\n"
    free = 1.0 - len(state.live) / max(1, state.settings.max_sessions)
    return f"up ready {max(1, round(100 * free))}%\n"


async def start_agent(state: ServerState, host: str, port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(agent_reply(state).encode("ascii"))
            await writer.drain()
        except ConnectionError as err:
            logger.warning("the load balancer's agent check left before its answer: %s", err)
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
