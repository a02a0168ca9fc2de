"""Running lipstream on existing engines: HAProxy in front of several serve processes, Janus for
audiences (the engines are Debian's packages; these only configure and start them)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request


def wait_until_answers(url: str, process: subprocess.Popen, timeout: float) -> dict:
    """The JSON that `url` answers once the `process` serving it is up; RuntimeError if the process
    exits first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before it answered") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.3)
