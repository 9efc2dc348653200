"""The proxy benchmark (``make bench``): the fake backend and Twitcher under gunicorn, wrk, a table.

Everything runs on 127.0.0.1. The fake backend (:mod:`bench.backend`) and Twitcher are served the
way production serves them (gunicorn, 2 workers with threads, Twitcher from an ini derived from
``production.ini``); the direct and proxied targets are measured in the same run, interleaved,
several rounds, and medians are reported. Results go to ``bench/results/latest.json``
and ``latest.md``. All child processes are stopped on exit, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import http.client
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from bench.backend import expected_sha256  # noqa: E402
from twitcher.services import service_from_registration  # noqa: E402
from twitcher.store import open_store  # noqa: E402
from twitcher.tokens import check_token, new_token, token_digest  # noqa: E402

log = logging.getLogger(__name__)

RESULTS_DIR = ROOT / "bench" / "results"
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
SERVICE_NAME = "bench"
WRK_INSTALL_HINT = "wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu), then run again."
#: Seconds a started server has to answer before the run gives up.
START_TIMEOUT = 30.0
#: Token-check cost counts as "the same" when the median at the largest store is within this factor.
TOKEN_COST_TOLERANCE = 1.5

POST_EXECUTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<wps:Execute service="WPS" version="1.0.0" xmlns:wps="http://www.opengis.net/wps/1.0.0"
    xmlns:ows="http://www.opengis.net/ows/1.1">
  <ows:Identifier>bench.echo</ows:Identifier>
  <wps:DataInputs><wps:Input><ows:Identifier>text</ows:Identifier>
    <wps:Data><wps:LiteralData>twitcher benchmark</wps:LiteralData></wps:Data></wps:Input></wps:DataInputs>
  <wps:ResponseForm><wps:ResponseDocument><wps:Output><ows:Identifier>output</ows:Identifier></wps:Output>
  </wps:ResponseDocument></wps:ResponseForm>
</wps:Execute>
"""
GET_CAPABILITIES = "?service=WPS&request=GetCapabilities"
GET_EXECUTE = "?service=WPS&version=1.0.0&request=Execute&identifier=bench.echo&DataInputs=text=hello;n=1"


@dataclass(frozen=True)
class Scenario:
    """One request type, sent the same way to the backend directly and through Twitcher."""

    key: str
    label: str
    method: str
    query: str
    auth_via: str  # where the token goes: "query", "header" or "" (none)
    direct_status: int
    proxy_status: int
    target: float  # the least acceptable ratio Twitcher / direct


SCENARIOS = (
    Scenario("getcaps", "GetCapabilities (public, rewritten)", "GET", GET_CAPABILITIES, "", 200, 200, 0.25),
    Scenario("execute_get", "GET Execute, token in query", "GET", GET_EXECUTE, "query", 200, 200, 0.25),
    Scenario("execute_post", "POST Execute, Bearer token", "POST", "", "header", 200, 200, 0.25),
    # The direct baseline of a rejection is the same request answered by the unprotected backend.
    Scenario("rejected", "GET Execute without token (401)", "GET", GET_EXECUTE, "", 200, 401, 0.3),
)


# -- processes ----------------------------------------------------------------------------------

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


# -- load: wrk ----------------------------------------------------------------------------------

def run_wrk(url: str, method: str, headers: Sequence[str], body_file: Optional[Path], duration: int,
            connections: int, threads: int) -> dict:
    """One wrk run; the numbers its Lua ``done()`` printed as JSON."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    for header in headers:
        cmd += ["-H", header]
    cmd += [url, "--", method]
    if body_file is not None:
        cmd.append(str(body_file))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line[len("BENCH_JSON "):])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout}")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / os.sysconf("SC_CLK_TCK")


def median_result(runs: List[dict]) -> dict:
    """The median of each number over the rounds (wrk's own percentiles within a round)."""
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["latency_us"]["p50"] for r in runs) / 1000,
        "p90_ms": statistics.median(r["latency_us"]["p90"] for r in runs) / 1000,
        "p99_ms": statistics.median(r["latency_us"]["p99"] for r in runs) / 1000,
        "requests": sum(r["requests"] for r in runs),
        "socket_errors": sum(r["errors"][k] for r in runs for k in ("connect", "read", "write", "timeout")),
        "status_errors": sum(r["errors"]["status"] for r in runs),
        "rounds_rps": [round(r["rps"], 1) for r in runs],
        "cpu_ms_per_request": {who: round(statistics.median(r["cpu_ms_per_request"][who] for r in runs), 3)
                               for who in runs[0]["cpu_ms_per_request"]},
    }


# -- downloads ----------------------------------------------------------------------------------

def vm_rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of ``pid`` (needs the right to write clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Peak RSS growth of some processes during a block: polled VmRSS plus the kernel's VmHWM."""

    def __init__(self, pids: Sequence[int], interval: float = 0.005):
        self.pids = list(pids)
        self.interval = interval
        self.growth_kib = 0
        self.samples = 0
        self.peak_kib = 0
        self.kernel_peak = False

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        hwm_ok = all(reset_peak(pid) for pid in self.pids)
        baseline = {pid: vm_rss_kib(pid) for pid in self.pids}
        peak = dict(baseline)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                for pid in self.pids:
                    peak[pid] = max(peak[pid], vm_rss_kib(pid))
                self.samples += 1
                stop.wait(self.interval)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join(timeout=5)
            if hwm_ok:
                for pid in self.pids:
                    peak[pid] = max(peak[pid], vm_hwm_kib(pid))
            growth = max(peak[pid] - baseline[pid] for pid in self.pids)
            self.growth_kib = max(self.growth_kib, growth)
            self.peak_kib = max([self.peak_kib, *peak.values()])
            self.kernel_peak = hwm_ok


def download(url: str, verify: bool, timeout: float = 60.0) -> Tuple[float, int, Optional[str]]:
    """GET ``url`` reading into one reused buffer: seconds, bytes, and the SHA-256 when ``verify``.

    The timed runs do not hash, so that the client is not what limits the direct backend.
    """
    parts = requests.utils.urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    digest = hashlib.sha256() if verify else None
    total = 0
    start = time.perf_counter()
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"download of {parts.path} answered {resp.status}: {resp.read(300)!r}")
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            total += n
            if digest is not None:
                digest.update(view[:n])
    finally:
        conn.close()
    return time.perf_counter() - start, total, digest.hexdigest() if digest else None


# -- token check --------------------------------------------------------------------------------

def fill_token_store(db_url: str, path: Path, size: int, probes: int) -> Tuple[List[str], float]:
    """A store of ``size`` tokens; returns ``probes`` clear-text tokens known to it and the fill time.

    The probes go in through the public API (``new_token`` + ``save_token``). The other records
    are inserted in bulk on a plain connection to the same file, because a million ``save_token``
    calls (one commit each) take minutes: their digests are spread evenly over the whole key space
    (as SHA-256 digests are) and inserted in order, in one transaction, without a journal.
    """
    start = time.perf_counter()
    store = open_store(db_url)
    store.ping()  # creates the schema
    store.close()
    fillers = size - probes
    step = (1 << 256) // max(fillers, 1)
    expires = time.time() + 3600 * 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MB, for this bulk connection only
        with conn:
            conn.executemany("INSERT INTO tokens (digest, expires_at, environ, revoked) VALUES (?, ?, '{}', 0)",
                             ((f"{i * step:064x}", expires) for i in range(fillers)))
        conn.execute("PRAGMA journal_mode = WAL")  # back to what the store uses
    store = open_store(db_url)
    tokens = []
    for _ in range(probes):
        token, record = new_token(2)
        store.save_token(record)
        tokens.append(token)
    store.close()
    # Measure the steady state: a thousand fresh commits would otherwise be read out of the WAL,
    # which doubles the lookup cost on a large store until SQLite's next automatic checkpoint.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return tokens, time.perf_counter() - start


def token_check_cost(workdir: Path, size: int, lookups: int, probes: int = 1000) -> dict:
    """Median and p99 microseconds of ``fetch_token`` + ``check_token`` on a store of ``size`` tokens."""
    path = workdir / f"tokens-{size}.sqlite"
    db_url = f"sqlite:///{path}"
    tokens, fill_seconds = fill_token_store(db_url, path, size, min(probes, size))
    store = open_store(db_url)
    digests = [token_digest(t) for t in tokens]
    for digest in digests:  # warm the process' connection and the page cache once
        check_token(store.fetch_token(digest))
    samples = []
    rng = secrets.SystemRandom()
    for _ in range(lookups):
        digest = rng.choice(digests)
        t0 = time.perf_counter_ns()
        check_token(store.fetch_token(digest))
        samples.append((time.perf_counter_ns() - t0) / 1000)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    samples.sort()
    return {"size": size, "fill_seconds": round(fill_seconds, 2), "lookups": lookups,
            "median_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1)}


# -- the run ------------------------------------------------------------------------------------

@dataclass
class Targets:
    direct: str  # the backend's OWS endpoint
    proxy: str  # the same service through Twitcher
    token: str
    body_file: Path

    @property
    def files(self) -> Dict[str, str]:
        """Where outputs are, per target: beside the endpoint, as the proxy resolves an extra path."""
        return {"direct": self.direct.rsplit("/", 1)[0], "twitcher": self.proxy}


def request_for(scenario: Scenario, targets: Targets, base: str) -> Tuple[str, List[str]]:
    url = base + scenario.query
    headers = []
    if scenario.auth_via == "query":
        url += f"&access_token={targets.token}"
    elif scenario.auth_via == "header":
        headers.append(f"Authorization: Bearer {targets.token}")
    if scenario.method == "POST":
        headers.append("Content-Type: text/xml")
    return url, headers


def probe(scenario: Scenario, targets: Targets, base: str, expected: int) -> Optional[str]:
    """Send the scenario's request once; a problem as text, or None when the answer is as expected."""
    url, header_lines = request_for(scenario, targets, base)
    headers = dict(h.split(": ", 1) for h in header_lines)
    body = targets.body_file.read_bytes() if scenario.method == "POST" else None
    resp = requests.request(scenario.method, url, headers=headers, data=body, timeout=10)
    if resp.status_code != expected:
        return f"{scenario.key} at {base}: expected {expected}, got {resp.status_code}"
    if scenario.key == "getcaps" and base == targets.proxy:
        backend_origin = targets.direct.rsplit("/", 1)[0]
        if backend_origin.encode() in resp.content or targets.proxy.encode() not in resp.content:
            return "GetCapabilities through Twitcher: operation URLs were not rewritten to the proxy"
    return None


def measure_requests(targets: Targets, args: argparse.Namespace, with_proxy: bool,
                     workers: Dict[str, List[int]]) -> Dict[str, dict]:
    """wrk for every scenario on both targets, interleaved, ``args.rounds`` times (after a warm-up).

    Also the CPU time each server's workers spent per request: on a small machine the proxy's CPU
    cost is what it takes away from the backend and the load generator.
    """
    bases = {"direct": targets.direct, "twitcher": targets.proxy} if with_proxy else {"direct": targets.direct}
    runs: Dict[str, Dict[str, List[dict]]] = {s.key: {t: [] for t in bases} for s in SCENARIOS}
    for rnd in range(-1, args.rounds):  # round -1 warms up both servers and is thrown away
        for scenario in SCENARIOS:
            order = list(bases) if rnd % 2 == 0 else list(reversed(list(bases)))
            for target in order:
                url, headers = request_for(scenario, targets, bases[target])
                body = targets.body_file if scenario.method == "POST" else None
                duration = 1 if rnd < 0 else args.duration
                cpu_before = {who: cpu_seconds(pids) for who, pids in workers.items()}
                result = run_wrk(url, scenario.method, headers, body, duration, args.connections, args.threads)
                result["cpu_ms_per_request"] = {
                    who: 1000 * (cpu_seconds(pids) - cpu_before[who]) / max(result["requests"], 1)
                    for who, pids in workers.items() if who == "backend" or target == "twitcher"}
                if rnd >= 0:
                    runs[scenario.key][target].append(result)
                    print(f"  round {rnd + 1} {scenario.key:13s} {target:9s} {result['rps']:9.0f} req/s", flush=True)
    results = {key: {t: median_result(r) for t, r in per_target.items()} for key, per_target in runs.items()}
    if with_proxy:
        for key, per_target in runs.items():
            # Each round pairs two runs made seconds apart: the median of their ratios is less
            # shaken by a busy machine than the ratio of two medians.
            ratios = [t["rps"] / d["rps"] for d, t in zip(per_target["direct"], per_target["twitcher"])]
            results[key]["ratio"] = statistics.median(ratios)
            results[key]["ratio_rounds"] = [round(r, 3) for r in ratios]
    return results


def measure_download(targets: Targets, args: argparse.Namespace, twitcher_workers: Optional[List[int]]) -> dict:
    """MB/s for the large file direct and through Twitcher, the workers' peak RSS growth, the sha256."""
    size = args.download_mb
    path = f"/outputs/{size}mb.bin"
    bases = {t: url for t, url in targets.files.items() if t == "direct" or twitcher_workers}
    expected = expected_sha256(size)
    result: Dict[str, object] = {"size_mb": size, "sha256_expected": expected}
    watch = RssWatch(twitcher_workers or [])
    speeds: Dict[str, List[float]] = {t: [] for t in bases}
    cpu_ms: List[float] = []  # Twitcher worker CPU per 100 MB delivered
    for rnd in range(args.rounds):
        order = list(bases) if rnd % 2 == 0 else list(reversed(list(bases)))
        for target in order:
            url = bases[target] + path + (f"?access_token={targets.token}" if target == "twitcher" else "")
            cm = watch.watch() if target == "twitcher" else contextlib.nullcontext()
            cpu_before = cpu_seconds(twitcher_workers) if target == "twitcher" else 0.0
            with cm:
                seconds, nbytes, _ = download(url, verify=False)
            if target == "twitcher":
                cpu_ms.append(1000 * (cpu_seconds(twitcher_workers) - cpu_before) / (nbytes / 1e8))
            if nbytes != size * 1024 * 1024:
                raise RuntimeError(f"{target} download delivered {nbytes} bytes instead of {size} MB")
            speeds[target].append(nbytes / 1e6 / seconds)
            print(f"  round {rnd + 1} download      {target:9s} {speeds[target][-1]:9.0f} MB/s", flush=True)
    for target, base in bases.items():
        url = base + path + (f"?access_token={targets.token}" if target == "twitcher" else "")
        _, _, digest = download(url, verify=True)
        result[f"{target}_sha256_ok"] = digest == expected
        result[f"{target}_mb_s"] = round(statistics.median(speeds[target]), 1)
        result[f"{target}_rounds_mb_s"] = [round(s, 1) for s in speeds[target]]
    if "twitcher" in speeds:
        result["ratio"] = statistics.median(t / d for d, t in zip(speeds["direct"], speeds["twitcher"]))
    if twitcher_workers:
        result["twitcher_cpu_ms_per_100mb"] = round(statistics.median(cpu_ms), 1)
        result["twitcher_peak_rss_growth_mb"] = round(watch.growth_kib / 1024, 1)
        result["twitcher_peak_rss_mb"] = round(watch.peak_kib / 1024, 1)
        result["rss_samples"] = watch.samples
        result["rss_kernel_peak_used"] = watch.kernel_peak
    return result


def machine() -> dict:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version.strip()}


# -- profile ------------------------------------------------------------------------------------

def py_spy() -> Optional[str]:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None)


def summarize_stacks(files: Sequence[Path], top: int = 12) -> dict:
    """Top functions of py-spy ``raw`` (collapsed) stacks: own time and time including callees.

    Only busy threads are sampled (py-spy leaves out idle ones), so the shares are of the CPU
    time the workers spent, whatever they spent it on.
    """
    own: Dict[str, int] = {}
    inclusive: Dict[str, int] = {}
    total = 0
    for file in files:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: Dict[str, int], keep=lambda frame: True) -> List[Tuple[str, float]]:
        rows = sorted(((f, n) for f, n in table.items() if keep(f)), key=lambda item: -item[1])
        return [(f, round(100 * n / total, 1)) for f, n in rows[:top]]

    return {"samples": total, "own": ranked(own) if total else [],
            "twitcher_inclusive": ranked(inclusive, lambda f: "twitcher/" in f) if total else []}


def profile_twitcher(targets: Targets, args: argparse.Namespace, workers: Sequence[int], outdir: Path) -> dict:
    """Sample the Twitcher workers with py-spy while wrk loads one request type at a time."""
    spy = py_spy()
    if spy is None:
        print("py-spy is not installed: `.venv/bin/pip install -e .[bench]` (or pip install py-spy)", flush=True)
        return {}
    seconds = args.profile
    jobs = [(s.key, *request_for(s, targets, targets.proxy), s.method, args.connections) for s in SCENARIOS]
    jobs.append(("download", f"{targets.proxy}/outputs/20mb.bin?access_token={targets.token}", [], "GET", 2))
    profiles = {}
    for key, url, headers, method, connections in jobs:
        files = [outdir / f"profile-{key}-{pid}.txt" for pid in workers]
        spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                                   "--format", "raw", "--nolineno", "--nonblocking", "--output", str(file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, file in zip(workers, files)]
        time.sleep(0.5)  # let py-spy attach before the load starts
        body = targets.body_file if method == "POST" else None
        run_wrk(url, method, headers, body, seconds + 1, connections, args.threads)
        for proc in spies:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        profiles[key] = summarize_stacks(files)
        print(f"  profiled {key}: {profiles[key]['samples']} samples", flush=True)
    return profiles


def profile_markdown(profiles: dict) -> str:
    lines = []
    for key, prof in profiles.items():
        lines += ["", f"### {key} ({prof['samples']} samples)", "", "| own time % | function |", "|---:|---|"]
        lines += [f"| {share} | `{frame}` |" for frame, share in prof["own"]]
        lines += ["", "| incl. callees % | Twitcher function |", "|---:|---|"]
        lines += [f"| {share} | `{frame}` |" for frame, share in prof["twitcher_inclusive"]]
    return "\n".join(lines) + "\n"


# -- report -------------------------------------------------------------------------------------

def verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def evaluate(results: dict) -> List[dict]:
    """One line per target of the issue: what was measured, the limit, PASS/FAIL."""
    checks = []
    for scenario in SCENARIOS:
        rows = results["requests"].get(scenario.key, {})
        ratio = rows.get("ratio")
        checks.append({"target": f"{scenario.label}: ratio >= {scenario.target}", "value": ratio,
                       "ok": None if ratio is None else ratio >= scenario.target})
    dl = results["download"]
    if "twitcher_mb_s" in dl:
        ratio = dl["ratio"]
        checks.append({"target": f"{dl['size_mb']} MB download: ratio >= 0.5", "value": ratio,
                       "ok": ratio >= 0.5 and dl["twitcher_sha256_ok"]})
        checks.append({"target": "download: Twitcher worker peak RSS growth <= 32 MB",
                       "value": dl["twitcher_peak_rss_growth_mb"], "ok": dl["twitcher_peak_rss_growth_mb"] <= 32})
    else:
        checks.append({"target": f"{dl['size_mb']} MB download: ratio >= 0.5", "value": None, "ok": None})
    tokens = results["tokens"]
    if len(tokens) >= 2:
        ratio = tokens[-1]["median_us"] / tokens[0]["median_us"]
        checks.append({"target": f"token check: median at {tokens[-1]['size']:,} within "
                                 f"{TOKEN_COST_TOLERANCE}x of {tokens[0]['size']:,}",
                       "value": ratio, "ok": ratio <= TOKEN_COST_TOLERANCE})
    return checks


def markdown(results: dict) -> str:
    """The tables of ``latest.md`` and of the docs page."""
    lines = [f"Run {results['started']} on {results['machine']['cores']} cores ({results['machine']['cpu']}), "
             f"Twitcher on {results['settings'].get('twitcher_server', 'gunicorn')}, "
             f"{results['settings']['connections']} connections, {results['settings']['rounds']} rounds of "
             f"{results['settings']['duration']} s; medians of the rounds, ratio: median of the per-round ratios.",
             ""]
    lines += ["| request | direct req/s | Twitcher req/s | ratio | direct p50 / p90 / p99 ms "
              "| Twitcher p50 / p90 / p99 ms | CPU ms/req: backend, Twitcher |", "|---|---:|---:|---:|---:|---:|---:|"]

    def lat(row: dict) -> str:
        return f"{row['p50_ms']:.1f} / {row['p90_ms']:.1f} / {row['p99_ms']:.1f}"

    for scenario in SCENARIOS:
        rows = results["requests"][scenario.key]
        direct = rows["direct"]
        proxied = rows.get("twitcher")
        cpu = f"{direct['cpu_ms_per_request']['backend']:.2f}"
        if proxied:
            cpu += f", {proxied['cpu_ms_per_request']['twitcher']:.2f}"
        lines.append(f"| {scenario.label} | {direct['rps']:.0f} | {proxied['rps']:.0f} | "
                     f"{rows['ratio']:.2f} | {lat(direct)} | {lat(proxied)} | {cpu} |" if proxied else
                     f"| {scenario.label} | {direct['rps']:.0f} | - | - | {lat(direct)} | - | {cpu} |")
    dl = results["download"]
    lines += ["", "| download | direct MB/s | Twitcher MB/s | ratio | Twitcher worker peak RSS growth "
              "| Twitcher CPU ms per 100 MB | sha256 |", "|---|---:|---:|---:|---:|---:|---|"]
    if "twitcher_mb_s" in dl:
        lines.append(f"| {dl['size_mb']} MB | {dl['direct_mb_s']:.0f} | {dl['twitcher_mb_s']:.0f} | "
                     f"{dl['ratio']:.2f} | {dl['twitcher_peak_rss_growth_mb']:.1f} MB | "
                     f"{dl['twitcher_cpu_ms_per_100mb']:.0f} | {'ok' if dl['twitcher_sha256_ok'] else 'WRONG'} |")
    else:
        lines.append(f"| {dl['size_mb']} MB | {dl['direct_mb_s']:.0f} | - | - | - | - | - |")
    lines += ["", "| tokens in the store | fill s | fetch_token + check_token median µs | p99 µs |",
              "|---:|---:|---:|---:|"]
    for row in results["tokens"]:
        lines.append(f"| {row['size']:,} | {row['fill_seconds']} | {row['median_us']} | {row['p99_us']} |")
    lines += ["", "| target | measured | result |", "|---|---:|---|"]
    for check in results["checks"]:
        value = "-" if check["value"] is None else f"{check['value']:.2f}"
        lines.append(f"| {check['target']} | {value} | {verdict(check['ok'])} |")
    return "\n".join(lines) + "\n"


def rst_tables(text: str) -> str:
    """The Markdown report as reStructuredText (``list-table``), to paste into docs/benchmark.rst."""
    out: List[str] = []
    rows: List[List[str]] = []

    def flush() -> None:
        if not rows:
            return
        out.extend([".. list-table::", "   :header-rows: 1", ""])
        for row in rows:
            out.append(f"   * - {row[0]}")
            out.extend(f"     - {cell}" for cell in row[1:])
        out.append("")
        rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not all(set(cell) <= set("-:") for cell in cells):
                rows.append([cell.replace("`", "``") for cell in cells])
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out).rstrip() + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, the median is reported")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--download-mb", type=int, default=200, help="size of the large download (default 200)")
    parser.add_argument("--token-sizes", default="1000,100000,1000000",
                        help="store sizes for the token-check cost, comma-separated")
    parser.add_argument("--token-lookups", type=int, default=20000, help="timed lookups per store size")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of each server (default 2)")
    parser.add_argument("--twitcher-workers", type=int, default=0,
                        help="worker processes of Twitcher (default: as --workers)")
    parser.add_argument("--twitcher-server", choices=("gunicorn", "uwsgi"), default="uwsgi",
                        help="the server of Twitcher (default uwsgi, from the uwsgi extra; or gunicorn)")
    parser.add_argument("--twitcher-worker-class", default="gthread",
                        help="gunicorn worker class of Twitcher: gthread (default) or sync; not gevent, which "
                             "libcurl's blocking exchange would stall")
    parser.add_argument("--twitcher-threads", type=int, default=8, help="threads per Twitcher worker")
    parser.add_argument("--backend-threads", type=int, default=16, help="threads per backend worker")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="then sample the Twitcher workers with py-spy under load, per request type")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, ini)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/.md go")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM unwind the ExitStack below, which stops every server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="twitcher-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        env = clean_env()

        backend = Server("backend", ["--workers", str(args.workers), "--worker-class", "gthread",
                                     "--threads", str(args.backend_threads), "--pythonpath", str(ROOT),
                                     "bench.backend:app"], listening_socket(), workdir, env)
        stack.callback(backend.stop)
        db_path = workdir / "twitcher.sqlite"
        db_url = f"sqlite:///{db_path}"
        direct = backend.base_url + "/wps"
        store = open_store(db_url)
        store.save_service(service_from_registration(direct, {"name": SERVICE_NAME}))
        token, record = new_token(2)
        store.save_token(record)
        store.close()

        tw_sock = listening_socket()
        ini = twitcher_ini(workdir, tw_sock.getsockname()[1], db_url)
        tw_workers = args.twitcher_workers or args.workers
        if args.twitcher_server == "uwsgi":
            tw_args = ["--paste", f"config:{ini}", "--paste-logger", "--processes", str(tw_workers),
                       "--threads", str(args.twitcher_threads)]
        else:
            tw_args = ["--workers", str(tw_workers), "--worker-class", args.twitcher_worker_class,
                       "--threads", str(args.twitcher_threads), "twitcher.wsgi:application"]
        twitcher = Server("twitcher", tw_args, tw_sock, workdir, {**env, "TWITCHER_INI": str(ini)},
                          kind=args.twitcher_server)
        stack.callback(twitcher.stop)
        body_file = workdir / "execute.xml"
        body_file.write_bytes(POST_EXECUTE)
        targets = Targets(direct=direct, proxy=f"{twitcher.base_url}/ows/proxy/{SERVICE_NAME}", token=token,
                          body_file=body_file)
        backend.wait_until_serving()
        twitcher.wait_until_serving()
        twitcher_workers = twitcher.workers(tw_workers)
        print(f"backend {backend.base_url} (pid {backend.proc.pid}), Twitcher {twitcher.base_url} "
              f"(pid {twitcher.proc.pid}, workers {twitcher_workers}); logs in {workdir}", flush=True)

        problems = [p for s in SCENARIOS if (p := probe(s, targets, targets.direct, s.direct_status))]
        if problems:
            raise RuntimeError("the fake backend misbehaves: " + "; ".join(problems))
        proxy_problems = [p for s in SCENARIOS if (p := probe(s, targets, targets.proxy, s.proxy_status))]
        with_proxy = not proxy_problems
        if proxy_problems:
            print("Twitcher is not ready, measuring the backend only: " + "; ".join(proxy_problems), flush=True)
        results["proxy_problems"] = proxy_problems

        print("requests (wrk):", flush=True)
        workers = {"backend": backend.workers(args.workers), "twitcher": twitcher_workers}
        results["requests"] = measure_requests(targets, args, with_proxy, workers)
        print(f"download ({args.download_mb} MB):", flush=True)
        results["download"] = measure_download(targets, args, twitcher_workers if with_proxy else None)
        if args.profile and with_proxy:
            print(f"profile ({args.profile} s per request type, py-spy):", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            results["profile"] = profile_twitcher(targets, args, twitcher_workers, args.out)
    print("token check (in-process, SQLite):", flush=True)
    results["tokens"] = []
    with tempfile.TemporaryDirectory(prefix="twitcher-bench-tokens-") as tokdir:
        for size in (int(s) for s in args.token_sizes.split(",") if s.strip()):
            row = token_check_cost(Path(tokdir), size, args.token_lookups)
            print(f"  {size:>9,} tokens: fill {row['fill_seconds']} s, median {row['median_us']} µs", flush=True)
            results["tokens"].append(row)
    results["checks"] = evaluate(results)
    table = markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text(table)
    (args.out / "latest.rst").write_text(rst_tables(table))
    if results.get("profile"):
        (args.out / "profile.md").write_text(profile_markdown(results["profile"]))
    print("\n" + table)
    print(f"results: {args.out / 'latest.json'}, latest.md and latest.rst (for docs/benchmark.rst)")
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
