"""A real nginx for end-to-end tests: Debian's binary, a private prefix, a free port, no daemon.

The nginx of the machine (``apt-get install nginx``; ``.ci/run`` installs it when missing) runs as
a child of the test process with everything in a temporary directory: configuration, pid file,
error log, temp paths. It listens on 127.0.0.1 only and is stopped when the block ends.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

#: Where Debian puts the binary; ``PATH`` of a non-root user often lacks /usr/sbin.
CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
START_TIMEOUT = 10.0


def nginx_binary() -> Optional[str]:
    """The nginx binary, or None when nginx is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main_conf(prefix: Path, include: Path) -> str:
    """A stock-like nginx.conf that includes the generated file in its ``http`` block."""
    temp = "\n".join(f"    {kind}_temp_path {prefix / (kind + '_temp')};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Run as root (CI containers), nginx would switch its workers to "nobody", who cannot enter a
    # private temporary directory: keep them as the user the tests run as.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\nerror_log {prefix / 'error.log'} warn;\npid {prefix / 'nginx.pid'};\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'};\n"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            f"{temp}\n"
            f"    include {include};\n"
            "}\n")


def check_config(binary: str, prefix: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on the configuration in ``prefix``."""
    return subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                          capture_output=True, text=True, timeout=30, check=False)


def write_config(prefix: Path, generated: str) -> None:
    prefix.mkdir(parents=True, exist_ok=True)
    include = prefix / "twitcher.conf"
    include.write_text(generated, encoding="utf-8")
    (prefix / "nginx.conf").write_text(main_conf(prefix, include), encoding="utf-8")


@contextlib.contextmanager
def serve_nginx(binary: str, prefix: Path, generated: str, port: int) -> Iterator[str]:
    """Run nginx with ``generated`` included, listening on ``port``; yield its base URL."""
    write_config(prefix, generated)
    checked = check_config(binary, prefix)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        process.stderr.close()


def error_log(prefix: Path) -> str:
    path = prefix / "error.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
