"""A real nginx for end-to-end tests: Debian's binary, a private prefix, a free port, no daemon.

The nginx of the machine (``apt-get install nginx``; ``.ci/run`` installs it when missing) runs as
a child of the test process with everything in a temporary directory: configuration, pid file,
error log, temp paths (:mod:`bench.nginx`, which the benchmark uses too). It listens on 127.0.0.1
only and is stopped when the block ends.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from bench.nginx import check_config, nginx_binary, nginx_command, write_config
from tests.servers import stop_process

__all__ = ["check_config", "error_log", "free_port", "nginx_binary", "serve_nginx", "write_config"]

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_nginx(binary: str, prefix: Path, generated: str, port: int) -> Iterator[str]:
    """Run nginx with ``generated`` included, listening on ``port``; yield its base URL."""
    write_config(prefix, generated)
    checked = check_config(binary, prefix)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
    process = subprocess.Popen(nginx_command(binary, prefix), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {process.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        process.stderr.close()


def error_log(prefix: Path) -> str:
    path = prefix / "error.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
