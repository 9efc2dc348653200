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
from typing import Dict, List, Optional, Sequence

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


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server that binds its own socket (pserve)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(fd: int) -> List[str]:
    """The start of a gunicorn command line listening on the inherited ``fd``."""
    return [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}"]


def fake_backend(workdir: Path, env: Dict[str, str], workers: int, threads: int) -> Server:
    """The fake OWS backend (:mod:`bench.backend`) under gunicorn, ``workers`` x ``threads``."""
    sock = listening_socket()
    return Server("backend", gunicorn_command(sock.fileno()) + [
        "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
        "--pythonpath", str(ROOT), "bench.backend:app"], workdir, env, sock=sock)


def uwsgi_command(fd: int) -> List[str]:
    """The start of a uWSGI command line listening on the inherited ``fd`` (the uwsgi extra)."""
    # --http11-socket: keep-alive, as wrk and gunicorn do it (--http-socket closes every connection).
    return [str(Path(sys.executable).with_name("uwsgi")), "--http11-socket", f"fd://{fd}", "--http-auto-chunked",
            "--master", "--need-app", "--die-on-term", "--lazy-apps", "--disable-logging"]


def pserve_command(ini: Path) -> List[str]:
    """``pserve <ini>``: the server of the ini's ``[server:main]`` (granian for production.ini)."""
    return [str(Path(sys.executable).with_name("pserve")), str(ini)]


class Server:
    """A server's master process in its own process group, so that stopping it stops its workers too.

    gunicorn and uWSGI get their listening socket as an inherited file descriptor (``sock``,
    ``fd://N``: no port race); ``pserve`` binds the ``port`` its environment names.
    """

    def __init__(self, name: str, command: Sequence[str], logdir: Path, env: Dict[str, str],
                 sock: Optional[socket.socket] = None, port: int = 0, worker_marker: str = "",
                 cwd: Path = ROOT):
        self.name = name
        self.port = sock.getsockname()[1] if sock is not None else port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logfile = logdir / f"{name}.log"
        #: Text in a worker's command line that tells it from other children of the master
        #: (granian's spawned workers beside multiprocessing's resource tracker).
        self.worker_marker = worker_marker
        fds = (sock.fileno(),) if sock is not None else ()
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(
                list(command), pass_fds=fds, start_new_session=True, cwd=cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if sock is not None:
            sock.close()  # the child holds the listener now

    def wait_until_serving(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the app answers: a request waits in the backlog of a socket that listens
        already until a worker has loaded the app; a server that binds its own is polled."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(self.base_url + "/", timeout=max(0.1, deadline - time.monotonic()))
                return
            except requests.ConnectionError as exc:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} did not answer ({exc}); see {self.logfile}") from None
                time.sleep(0.1)
            except requests.RequestException as exc:
                raise RuntimeError(f"{self.name} did not answer ({exc}); see {self.logfile}") from None

    def workers(self, expected: int, timeout: float = START_TIMEOUT) -> List[int]:
        """The worker pids (children of the master), once ``expected`` of them run."""
        deadline = time.monotonic() + timeout
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            pids = [int(p) for p in path.read_text().split()] if path.exists() else []
            if self.worker_marker:
                pids = [p for p in pids if self.worker_marker in _cmdline(p)]
            if len(pids) >= expected:
                return pids
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: {expected} workers did not start; see {self.logfile}")

    def stop(self) -> None:
        stop_process_group(self.proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), SIGKILL after
    10 s: a server and every worker it spawned end with the run, however they behave."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def clean_env() -> Dict[str, str]:
    """The environment for the servers, without TWITCHER_* overrides that would change the run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TWITCHER_")}


def twitcher_ini(workdir: Path, port: int, db_url: str) -> Path:
    """``production.ini`` with what this run needs changed: URL, store, no internal WPS, a password."""
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "production.ini")
    app = parser["app:main"]
    workdir.mkdir(parents=True, exist_ok=True)
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
