"""Several `lipstream serve` processes behind HAProxy (Debian's `haproxy`): one per core group or GPU.

We build no balancer of our own. What each process adds for HAProxy:
- its name (`serve --instance b1`) starts every session and watch id it hands out (`b1-...`), so a
  rule per process sends each later request of a session (/sessions/b1-..., /whip/b1-...,
  /whep/b1-...) to the process that owns it;
- an agent-check port (`serve --agent-port`): HAProxy connects, reads one line and sets the process's
  weight from it: `up ready 50%` (its share of free sessions) or `drain` while it would refuse a new
  session (full, or its measured CPU could not hold one more at 25 fps), so new sessions go elsewhere
  while the sessions it owns keep reaching it;
- a 503 that HAProxy retries on another process (`retry-on 503`, `option redispatch`): a process that
  filled up between two agent checks hands the new session to the next one. A process that died is
  retried the same way (`conn-failure`), and requests for its sessions fail cleanly with 404.
- `X-Forwarded-For`, trusted from the balancer only (`serve --trust-proxy`), so that the limit per
  client counts clients, not the balancer.

`haproxy_config` writes the configuration (the README shows it); `LocalCluster` starts the whole set on
this machine (`lipstream cluster`), and the tests use it as it is. The agent itself is
realtime/agent.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import wait_until_answers

logger = logging.getLogger("lipstream.deploy")

HAPROXY = "haproxy"
SESSION_PREFIXES = ("/sessions/", "/whip/", "/whep/")  # paths whose next segment is a session or watch id


@dataclass(frozen=True)
class Backend:
    name: str  # the process's --instance
    port: int
    agent_port: int
    host: str = "127.0.0.1"


def haproxy_config(port: int, backends: list[Backend], bind: str = "127.0.0.1", check_every: str = "1s") -> str:
    """HAProxy's configuration for `backends` behind one address (HAProxy 2.4 or later)."""
    names = [b.name for b in backends]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"backend names must be unique and non-empty: {names}")
    owned = " ".join(f"{prefix}{{name}}-" for prefix in SESSION_PREFIXES)
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 65s",
        "    timeout server 65s",
        "    timeout http-request 10s",
        "    timeout tunnel 1h  # WebSocket audio",
        "frontend lipstream",
        f"    bind {bind}:{port}",
        "    option forwardfor",
        "    default_backend lipstream",
        "backend lipstream",
        "    balance roundrobin",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    acl owned path_reg ^({'|'.join(SESSION_PREFIXES)})[^/]+",
        "    # a new session that one process refuses (503) or cannot take (down) goes to another",
        "    retry-on conn-failure 503",
        "    retries 2",
        "    option redispatch 1",
        "    http-request wait-for-body time 2s if !owned  # an offer is retried whole",
        "    http-request disable-l7-retry if owned  # a session's requests stay with its process",
        "    http-error status 503 content-type application/json string "
        f"'{json.dumps({'error': 'no lipstream process can take this request now; try again later'})}'",
    ]
    for backend in backends:
        name = backend.name
        gone = json.dumps(
            {"error": f"the process that held this session ({name}) is down: it has ended; open a new one"}
        )
        lines += [
            f"    acl of_{name} path_beg {owned.format(name=name)}",
            f"    http-request return status 404 content-type application/json string '{gone}' "
            f"if of_{name} !{{ srv_is_up({name}) }}",
            f"    use-server {name} if of_{name}",
        ]
    for backend in backends:
        lines.append(
            f"    server {backend.name} {backend.host}:{backend.port} check inter {check_every} fall 2 rise 2 "
            f"agent-check agent-port {backend.agent_port} agent-inter {check_every}"
        )
    return "\n".join(lines) + "\n"


class LocalCluster:
    """`processes` serve processes (ports port+1.., agent ports port+101..) and HAProxy on `port`, all on
    loopback. `serve_args` go to every serve process; `env` adds to their environment."""

    def __init__(
        self,
        port: int,
        processes: int = 2,
        serve_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        check_every: str = "1s",
        start_timeout: float = 240.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a cluster needs at least one serve process, not {processes}")
        self.port, self.serve_args, self.start_timeout = port, serve_args, start_timeout
        self.env = {**os.environ, **(env or {})}
        self.backends = [Backend(f"b{i + 1}", port + 1 + i, port + 101 + i) for i in range(processes)]
        self.servers: dict[str, subprocess.Popen] = {}
        self.haproxy: subprocess.Popen | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="lipstream-cluster-"))
        self.config = self.folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(port, self.backends, check_every=check_every))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def backend_url(self, name: str) -> str:
        backend = next(b for b in self.backends if b.name == name)
        return f"http://{backend.host}:{backend.port}"

    def start_backend(self, name: str) -> None:
        backend = next(b for b in self.backends if b.name == name)
        command = [
            *(sys.executable, "-m", "lipstream.cli", "serve"),
            *("--host", backend.host, "--port", str(backend.port)),
            *("--instance", backend.name, "--agent-port", str(backend.agent_port), "--trust-proxy", "127.0.0.1"),
            *self.serve_args,
        ]
        with (self.folder / f"{name}.log").open("ab") as log:  # the process keeps its own copy of the file
            self.servers[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_answers(f"{self.backend_url(name)}/health", self.servers[name], self.start_timeout)

    def stop_backend(self, name: str) -> None:
        process = self.servers.pop(name)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart_exited(self) -> list[str]:
        """Starts again each serve process that exited (as a supervisor such as systemd would); its
        sessions are gone, and their requests get 404 from whichever process HAProxy picks."""
        exited = [name for name, process in self.servers.items() if process.poll() is not None]
        for name in exited:
            logger.error("serve process %s exited with %s; starting it again", name, self.servers[name].returncode)
            self.servers.pop(name)
            self.start_backend(name)
        return exited

    def start(self) -> LocalCluster:
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected {self.config}: {check.stderr.strip() or check.stdout.strip()}")
        try:
            for backend in self.backends:  # one at a time: the first one exports the graphs the others reuse
                self.start_backend(backend.name)
            with (self.folder / "haproxy.log").open("ab") as log:
                self.haproxy = subprocess.Popen(
                    [HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
                )
            wait_until_answers(f"{self.url}/health", self.haproxy, 30.0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=10)
            self.haproxy = None
        for name in list(self.servers):
            self.stop_backend(name)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
