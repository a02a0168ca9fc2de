"""Debian's Janus, configured with only what lipstream uses (the VideoRoom plugin and the plain HTTP
transport) and started on this machine: for the tests, the fan-out benchmark, or a local set-up.
Talking to Janus is realtime/janus.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import wait_until_answers

JANUS_LIBRARIES = Path("/usr/lib/x86_64-linux-gnu/janus")  # Debian's janus package


def janus_config(folder: Path, http_port: int, rtp_ports: tuple[int, int] = (40000, 40999)) -> Path:
    """A configuration folder for Debian's Janus with only what we use: the VideoRoom plugin and the
    plain HTTP transport on loopback. Returns the main configuration file (`janus -C FILE -F FOLDER`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, library in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
        (folder / kind).mkdir(exist_ok=True)
        link = folder / kind / library
        if not link.exists():
            link.symlink_to(JANUS_LIBRARIES / kind / library)
    main = folder / "janus.jcfg"
    main.write_text(
        "general: {\n"
        f'\tconfigs_folder = "{folder}"\n\tplugins_folder = "{folder / "plugins"}"\n'
        f'\ttransports_folder = "{folder / "transports"}"\n'
        f'\tevents_folder = "{folder / "none"}"\n\tloggers_folder = "{folder / "none"}"\n'
        "\tdebug_level = 3\n}\n"
        f'media: {{\n\trtp_port_range = "{rtp_ports[0]}-{rtp_ports[1]}"\n}}\n'
    )
    (folder / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        f'\tjson = "plain"\n\tbase_path = "/janus"\n\thttp = true\n\tport = {http_port}\n'
        '\tinterface = "lo"\n\thttps = false\n}\nadmin: {\n\tadmin_http = false\n}\n'
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return main


def start_janus(folder: Path, http_port: int, timeout: float = 20.0) -> subprocess.Popen:
    """Debian's Janus on loopback with `janus_config`; returns once its HTTP API answers."""
    if shutil.which("janus") is None:
        raise FileNotFoundError("Janus is not installed: apt-get install janus (Debian's package)")
    main = janus_config(folder, http_port)
    with (folder / "janus.log").open("ab") as log:
        process = subprocess.Popen(["janus", "-F", str(folder), "-C", str(main)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_answers(f"http://127.0.0.1:{http_port}/janus/info", process, timeout)
    except (RuntimeError, TimeoutError) as err:
        process.kill()
        raise RuntimeError(f"Janus did not start ({err}); see {folder / 'janus.log'}") from None
    return process
