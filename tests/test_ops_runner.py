"""``pserve production.ini`` as shipped: granian workers, graceful SIGTERM, restarted workers, metrics.

Each test starts the real command in a subprocess, on a free 127.0.0.1 port, with a temporary
SQLite store and password given through the environment (the ini file is the repository's own),
in front of a real backend (waitress in this process) that can be made slow.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import requests

from tests.servers import serve_wsgi
from twitcher.ops.batch import FLUSH_INTERVAL
from twitcher.ops.runner import default_workers
from twitcher.services import service_from_registration
from twitcher.store import open_store
from twitcher.tokens import new_token

ROOT = Path(__file__).resolve().parent.parent
PSERVE = str(Path(sys.executable).with_name("pserve"))
#: Seconds the server has to start (master loads the app, then spawns its workers).
START_TIMEOUT = 60
#: How long the backend holds the in-flight request while the server is told to stop.
SLOW_SECONDS = 2.0
CAPABILITIES = "?service=WPS&request=GetCapabilities"
EXECUTE = "?service=WPS&version=1.0.0&request=Execute&identifier=x"

pytest.importorskip("granian")


def _backend(environ, start_response):
    """A WPS-ish backend: ``/slow`` answers after SLOW_SECONDS, everything else at once."""
    if environ["PATH_INFO"].endswith("/slow"):
        time.sleep(SLOW_SECONDS)
    body = b'<?xml version="1.0"?><wps:Capabilities xmlns:wps="http://www.opengis.net/wps/1.0.0"/>'
    start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> List[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _listeners(port: int) -> int:
    """Sockets listening on ``port``: on Linux each granian worker binds its own (SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                    count += 1
    return count


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


class Production:
    """A running ``pserve production.ini``: its process, URL, output files and store."""

    def __init__(self, tmp_path: Path, backend_url: str, env: Dict[str, str]) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        db_url = f"sqlite:///{tmp_path}/twitcher.sqlite"
        self.store = open_store(db_url)
        self.store.save_service(service_from_registration(backend_url + "/wps", {"name": "emu"}))
        self.store.save_service(service_from_registration(backend_url + "/wps", {"name": "open", "public": True}))
        self.stdout = tmp_path / "stdout.log"
        self.stderr = tmp_path / "stderr.log"
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWITCHER_", "PROMETHEUS_"))}
        env = {**base_env, "TWITCHER_LISTEN": f"127.0.0.1:{self.port}", "TWITCHER_URL": self.base_url,
               "TWITCHER_DB_URL": db_url, "TWITCHER_PASSWORD": "runner-test-password", **env}
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([PSERVE, str(ROOT / "production.ini")], cwd=tmp_path, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def wait_until_serving(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pserve exited with {self.proc.returncode}: {self.stderr.read_text()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(self.base_url + "/health", timeout=5).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"pserve did not answer within {timeout} s: {self.stderr.read_text()}")

    def workers(self) -> List[int]:
        """The worker processes (granian's, spawned), not multiprocessing's resource tracker."""
        return sorted(p for p in _children(self.proc.pid) if "spawn_main" in _cmdline(p))

    def all_workers(self, timeout: float = START_TIMEOUT) -> List[int]:
        """The workers once all of them (one per core, as production.ini says) listen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.workers()
            if len(workers) >= default_workers() and _listeners(self.port) >= default_workers():
                return workers
            time.sleep(0.1)
        raise AssertionError(f"not all {default_workers()} workers started: {self.workers()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.store.close()


@pytest.fixture(scope="module")
def backend_url() -> Iterator[str]:
    """A real backend for the module (waitress in this process)."""
    with serve_wsgi(_backend, threads=4) as url:
        yield url


@contextlib.contextmanager
def production(tmp_path: Path, backend_url: str, **env: str) -> Iterator[Production]:
    server = Production(tmp_path, backend_url, env)
    try:
        server.wait_until_serving()
        yield server
    finally:
        server.stop()


def test_sigterm_lets_the_request_in_flight_finish_then_exits(tmp_path, backend_url):
    with production(tmp_path, backend_url) as server:
        workers = server.all_workers()
        answer: Dict[str, object] = {}

        def slow_request() -> None:
            try:
                resp = requests.get(f"{server.base_url}/ows/proxy/open/slow", timeout=30)
                answer["status"], answer["body"] = resp.status_code, resp.content
            except requests.RequestException as exc:  # reported by the assertion below
                answer["error"] = exc

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(SLOW_SECONDS / 2)  # the request is at the backend now
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        server.proc.wait(timeout=30)
        elapsed = time.monotonic() - stopped_at
        assert answer.get("status") == 200, answer
        assert b"Capabilities" in answer["body"]
        assert server.proc.returncode == 0
        # It waited for the request (about SLOW_SECONDS / 2 more), not for graceful_timeout (30 s).
        assert elapsed < 20
        assert not [p for p in workers if Path(f"/proc/{p}").exists()]  # the workers are gone too


def test_a_killed_worker_is_replaced(tmp_path, backend_url):
    with production(tmp_path, backend_url) as server:
        before = server.all_workers()
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            now = server.workers()
            if victim not in now and len(now) == len(before):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"worker {victim} was not replaced: {server.workers()}")
        server.all_workers()
        assert server.proc.poll() is None
        for _ in range(2 * len(before)):  # whichever worker takes them, all answer
            assert requests.get(f"{server.base_url}/ows/proxy/open{CAPABILITIES}", timeout=10).status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if got == wanted:
                return float(match.group(3))
    return 0.0


def test_metrics_add_up_over_the_workers_and_the_access_log_has_a_line_each(tmp_path, backend_url):
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: emptied at start
    with production(tmp_path, backend_url, TWITCHER_METRICS="true", TWITCHER_ACCESS_LOG="true",
                    PROMETHEUS_MULTIPROC_DIR=str(multiproc)) as server:
        token, record = new_token(1)
        server.store.save_token(record)
        base = f"{server.base_url}/ows/proxy"
        # A new connection per request, so that the kernel may hand them to any worker.
        for _ in range(5):
            assert requests.get(f"{base}/emu{CAPABILITIES}", timeout=10).status_code == 200
        for _ in range(3):
            assert requests.get(f"{base}/emu{EXECUTE}", timeout=10).status_code == 401
        for _ in range(2):
            assert requests.get(f"{base}/emu{EXECUTE}&access_token={token}", timeout=10).status_code == 200
        assert requests.get(f"{base}/nosuchservice{CAPABILITIES}", timeout=10).status_code == 404

        # Each worker applies its queued observations every FLUSH_INTERVAL; the scraped one at once.
        time.sleep(3 * FLUSH_INTERVAL)
        resp = requests.get(server.base_url + "/metrics", timeout=10)
        assert resp.status_code == 200
        text = resp.text
        wps = {"service_type": "wps"}
        assert _sample(text, "twitcher_requests_total", operation="getcapabilities", decision="allowed",
                       code="2xx", **wps) == 5
        assert _sample(text, "twitcher_requests_total", operation="execute", decision="denied", code="4xx", **wps) == 3
        assert _sample(text, "twitcher_requests_total", operation="execute", decision="allowed", code="2xx",
                       **wps) == 2
        assert _sample(text, "twitcher_requests_total", operation="none", decision="invalid", code="4xx",
                       service_type="unknown") == 1
        assert _sample(text, "twitcher_request_duration_seconds_count", operation="getcapabilities", **wps) == 5
        assert _sample(text, "twitcher_upstream_duration_seconds_count", **wps) == 7
        assert _sample(text, "twitcher_requests_in_flight") == 0
        assert _sample(text, "twitcher_store_operation_seconds_count", operation="fetch_token") == 2  # 3 had none
        assert not (multiproc / "counter_999999.db").exists()
        # Refused from anywhere but the allowed addresses, and when relayed by a front server.
        relayed = requests.get(server.base_url + "/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, timeout=10)
        assert relayed.status_code == 403

        # A dead worker's counts stay; its live gauge's file goes at the next scrape.
        victim = server.all_workers()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT
        while victim in server.workers() and time.monotonic() < deadline:
            time.sleep(0.1)
        server.all_workers()  # replaced and listening again
        text = requests.get(server.base_url + "/metrics", timeout=10).text
        assert _sample(text, "twitcher_requests_total", operation="getcapabilities", decision="allowed",
                       code="2xx", **wps) == 5
        assert not list(multiproc.glob(f"gauge_live*_{victim}.db"))

    lines = [json.loads(line) for line in server.stdout.read_text().splitlines() if line.startswith("{")]
    assert len(lines) == 11
    assert {"time", "method", "service", "service_type", "ows_service", "ows_request", "route", "decision",
            "status", "bytes", "duration_ms", "upstream_ms", "token", "remote_addr", "forwarded_for"} <= set(lines[0])
    assert [line["decision"] for line in lines].count("denied") == 3
    with_token = [line for line in lines if line["token"]]
    assert len(with_token) == 2 and all(line["token"] == record.digest[:8] for line in with_token)
    assert token not in server.stdout.read_text()
    assert token not in server.stderr.read_text()


def test_idle_keep_alive_connections_do_not_lock_new_clients_out(tmp_path, backend_url):
    """Found by the soak: granian's backpressure counts connections, and sized from the threads
    (16 a worker) it let 64 keep-alive clients starve the rest until they timed out."""
    idle = 40 * default_workers()  # far more than threads * 2 per worker, far fewer than the default
    with production(tmp_path, backend_url) as server:
        server.all_workers()
        sessions = []
        try:
            for _ in range(idle):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sessions.append(sock)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # answered, kept alive, now idle
            for _ in range(3):
                started = time.monotonic()
                assert requests.get(server.base_url + "/health", timeout=10).status_code == 200
                assert time.monotonic() - started < 5
        finally:
            for sock in sessions:
                sock.close()


@pytest.mark.parametrize("path", ["/RPC2", "/ows/proxy/emu"])
def test_a_huge_declared_body_is_answered_before_it_is_sent(tmp_path, backend_url, path):
    """granian hands the request to Twitcher before the body: its own limits answer at once
    (401 for a stranger at /RPC2, 413 at the proxy), whatever Content-Length claims."""
    with production(tmp_path, backend_url) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
                         f"Content-Length: {10 ** 12}\r\n\r\n".encode())
            started = time.monotonic()
            head = sock.recv(4096)
    assert time.monotonic() - started < 5
    assert head.split(b" ", 2)[1] == (b"401" if path == "/RPC2" else b"413")
