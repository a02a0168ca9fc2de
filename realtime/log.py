"""The real-time package's logger, and the two ways a failure reaches it: a background task that
ended with an exception, and a hot-path error logged with its traceback at most every few seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger("lipstream.realtime")


def log_task_failure(task: asyncio.Task) -> None:
    """A done-callback: a background task that raised is logged with its traceback (cancelled ones
    are not failures)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logger.error("task %s failed", task.get_name(), exc_info=error)


def spawn(coroutine: object, name: str) -> asyncio.Task:
    """asyncio.create_task with log_task_failure attached; keep the returned reference."""
    task = asyncio.create_task(coroutine, name=name)
    task.add_done_callback(log_task_failure)
    return task


class RateLimitedLog:
    """A hot-path failure logged at most once per `every` seconds (with its traceback, when there is
    one); the next message says how many were left out meanwhile, so none goes uncounted."""

    def __init__(self, level: int, every: float = 10.0, now: Callable[[], float] = time.monotonic) -> None:
        self.level, self.every, self._now = level, every, now  # now: the owner's clock, when it has one
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, message: str, error: BaseException | None = None) -> None:
        now = self._now()
        if self._last is not None and now - self._last < self.every:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        logger.log(self.level, "%s%s", message, extra, exc_info=error)
        self._last, self._suppressed = now, 0
