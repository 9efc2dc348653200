"""The servers of the benchmark: the fake backend and Twitcher, each a process group on 127.0.0.1."""
from __future__ import annotations

import configparser
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import requests

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a started server has to answer before the run gives up.
START_TIMEOUT = 30.0


def listening_socket() -> socket.socket:
    """A socket listening on 127.0.0.1 at a free port, to hand to a child server (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _server_command(kind: str, fd: int) -> List[str]:
    """The start of the command line of a ``kind`` server listening on the inherited ``fd``."""
    if kind == "uwsgi":
        # --http11-socket: keep-alive, as wrk and gunicorn do it (--http-socket closes every connection).
        return [str(Path(sys.executable).with_name("uwsgi")), "--http11-socket", f"fd://{fd}", "--http-auto-chunked",
                "--master", "--need-app", "--die-on-term", "--lazy-apps", "--disable-logging"]
    return [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}"]


class Server:
    """A gunicorn or uWSGI master in its own process group, so that stopping it stops its workers too.

    Both get the listening socket as an inherited file descriptor (``fd://N``), so no port race.
    """

    def __init__(self, name: str, args: Sequence[str], sock: socket.socket, logdir: Path, env: Dict[str, str],
                 kind: str = "gunicorn"):
        self.name = name
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logfile = logdir / f"{name}.log"
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(
                _server_command(kind, sock.fileno()) + list(args),
                pass_fds=(sock.fileno(),), start_new_session=True, cwd=ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        sock.close()  # the child holds the listener now

    def wait_until_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the app answers. The socket listens from the start, so one request simply
        waits in the backlog until a worker has loaded the app: no polling needed."""
        try:
            requests.get(self.base_url + "/", timeout=timeout)
        except requests.RequestException as exc:
            raise RuntimeError(f"{self.name} did not answer ({exc}); see {self.logfile}") from None

    def workers(self, expected: int, timeout: float = START_TIMEOUT) -> List[int]:
        """The worker pids (children of the master), once ``expected`` of them run."""
        deadline = time.monotonic() + timeout
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            pids = [int(p) for p in path.read_text().split()] if path.exists() else []
            if len(pids) >= expected:
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: {expected} workers did not start; see {self.logfile}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def clean_env() -> Dict[str, str]:
    """The environment for the servers, without TWITCHER_* overrides that would change the run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TWITCHER_")}


def twitcher_ini(workdir: Path, port: int, db_url: str) -> Path:
    """``production.ini`` with what this run needs changed: URL, store, no internal WPS, a password."""
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "production.ini")
    app = parser["app:main"]
    app["twitcher.url"] = f"http://127.0.0.1:{port}"
    app["twitcher.db_url"] = db_url
    app["twitcher.wps"] = "false"
    app["twitcher.wps_workdir"] = str(workdir / "wps")
    app["twitcher.password"] = secrets.token_urlsafe(16)
    parser.remove_section("server:main")  # gunicorn serves it; its options are on the command line
    path = workdir / "twitcher.ini"
    with open(path, "w") as out:
        parser.write(out)
    return path
