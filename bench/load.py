"""Load generation and what it measures: wrk runs, downloads, CPU time and resident memory of processes."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import requests

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"


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
        #: answers without the expected status (503 busy, 502 ...), counted out of "rps"
        "other_answers": sum(r.get("other_answers", 0) for r in runs),
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
