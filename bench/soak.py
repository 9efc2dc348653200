"""The soak test (``make soak``): a real Twitcher under mixed load, with a store outage in the middle.

What runs, all on 127.0.0.1 and all stopped at the end, whatever happens:

- Twitcher as operators run it, ``pserve`` on an ini made from ``production.ini`` (granian, its
  workers and threads), with the embedded store in an SQLite file;
- the recording backend (:mod:`bench.soak_backend`), registered as service ``soak``;
- ``--clients`` threads (default 64) for ``--seconds`` (default 600), each in a closed loop over a
  mix of admin XML-RPC calls (generate, revoke, list services) and proxied requests: public
  GetCapabilities, and Execute with a valid, a revoked, an expired, a missing or a garbage token;
- half-way, an outage of the store for ``--outage`` seconds (default 30): another process takes
  every lock of the database's WAL index, as a process stuck in a write or a recovery would, so
  that no connection of Twitcher can read or write (SQLite retries a read for ten seconds, then
  answers "locking protocol"; a write waits for its busy timeout).

Every request carries a unique ``rid``; the driver remembers what it sent with it, the backend
writes down what it received. The run fails (exit 1) when:

- a request without a valid token reached the backend (the let-through count), or a 200 answer
  to an Execute with a valid token is missing from the backend's record (the record is broken);
- a request got no answer (connection error, timeout), or a 5xx other than 503, or a 503 outside
  the outage (plus ``RESUME_GRACE`` seconds for Twitcher to notice it is over), or any status
  other than the one its kind of request must get. The one 503 allowed outside the outage is
  *busy*: a proxied request beyond ``twitcher.max_inflight_per_service``, answered at once with
  ``Retry-After`` (64 closed-loop clients on one service are an overload by design). It is
  counted and its latency checked, since "busy" must mean "at once", never "after a wait";
- 503 answers during the outage were slow (median over ``SLOW_503`` seconds): an unavailable
  store must be reported, not waited for;
- the resident memory of Twitcher grew by more than ``--rss-bound-mb`` (default 32) from the end of
  the warm-up to the end of the run, or no valid request succeeded after the outage.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import requests

from bench.servers import stop_process_group
from twitcher.admin.rpcinterface import FAULT_STORE_UNAVAILABLE

ROOT = Path(__file__).resolve().parent.parent
#: Seconds after the outage within which 503 answers are still expected.
RESUME_GRACE = 15.0
#: Median seconds above which the 503 answers of the outage count as a hang.
SLOW_503 = 1.0
#: Seconds a client waits for an answer before it counts as none.
CLIENT_TIMEOUT = 30.0
#: Seconds of load before the resident memory is taken as the baseline (caches fill, pools grow).
WARM_UP = 30.0
BAD_TOKENS = ("revoked", "expired", "missing", "garbage")
#: Kinds of request and their weights in the mix.
MIX = {"public": 30, "valid": 20, "revoked": 8, "expired": 8, "missing": 8, "garbage": 8,
       "admin_cycle": 6, "admin_expiring": 3, "admin_list": 6, "health": 3}
EXPECTED = {"public": "200", "valid": "200", "revoked": "401", "expired": "401", "missing": "401",
            "garbage": "401", "generate": "ok", "revoke": "ok", "list": "ok", "health": "200"}
#: What an admin call answers while the store is unavailable.
STORE_FAULT = f"fault:{FAULT_STORE_UNAVAILABLE}"
#: A 503 with Retry-After: the service had as many exchanges in flight as Twitcher allows.
BUSY = "503-busy"
#: The kinds of request that reach the per-service bound (the others are refused before it).
PROXIED = ("public", "valid")


@dataclass
class Outcome:
    rid: str
    kind: str
    answer: str  # an HTTP status, "ok", "fault:<code>" or "error:<exception>"
    start: float
    end: float


class Tokens:
    """The driver's knowledge of tokens: only what Twitcher confirmed goes into a pool."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.valid: List[str] = []
        self.revoked: List[str] = []
        self.expired: List[str] = []
        self.expiring: List[Tuple[float, str]] = []  # (wall-clock time from which it is expired, token)

    def pick(self, kind: str) -> Optional[str]:
        with self.lock:
            now = time.time()
            matured = [t for usable, t in self.expiring if usable <= now]
            if matured:
                self.expired.extend(matured)
                self.expiring = [(u, t) for u, t in self.expiring if u > now]
            pool = {"valid": self.valid, "revoked": self.revoked, "expired": self.expired}[kind]
            return random.choice(pool) if pool else None

    def add(self, kind: str, token: str, usable_at: float = 0.0) -> None:
        with self.lock:
            if kind == "expiring":
                self.expiring.append((usable_at, token))
            else:
                pool = {"valid": self.valid, "revoked": self.revoked}[kind]
                pool.append(token)
                del pool[:-500]  # bounded: the driver must not be what grows


def garbage_token() -> str:
    return random.choice([
        secrets.token_urlsafe(32), secrets.token_hex(8), "x" * 300, "null", "' OR 1=1 --",
        "%00" + secrets.token_urlsafe(8), "\u00e9t\u00e9-" + secrets.token_urlsafe(8),
    ])


class Client(threading.Thread):
    """One closed-loop client: a request, its answer written down, the next one."""

    def __init__(self, number: int, base: str, password: str, tokens: Tokens, deadline: float,
                 outcomes: List[Outcome], sent: Dict[str, str]) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.base, self.tokens, self.deadline = base, tokens, deadline
        self.outcomes, self.sent = outcomes, sent
        self.session = requests.Session()
        self.session.trust_env = False
        self.admin = ("admin", password)  # for /RPC2 only: a session-wide auth would replace Bearer headers
        self.counter = 0
        self.prefix = f"c{number}-"
        self.kinds, self.weights = list(MIX), list(MIX.values())

    def rid(self, kind: str) -> str:
        self.counter += 1
        rid = f"{self.prefix}{self.counter}"
        self.sent[rid] = kind  # before sending: the backend may record it before we hear back
        return rid

    def record(self, rid: str, kind: str, answer: str, start: float) -> None:
        self.outcomes.append(Outcome(rid, kind, answer, start, time.time()))

    def run(self) -> None:
        while time.time() < self.deadline:
            kind = random.choices(self.kinds, self.weights)[0]
            if kind == "admin_cycle":
                token = self.rpc("generate", "generate_token", 1)
                if token:
                    self.execute("valid", token["access_token"])
                    if self.rpc("revoke", "revoke_token", token["access_token"]) is True:
                        self.tokens.add("revoked", token["access_token"])
            elif kind == "admin_expiring":
                token = self.rpc("generate", "generate_token", 1 / 1800)  # two seconds
                if token:
                    self.tokens.add("expiring", token["access_token"], token["expires_at"] + 2)
            elif kind == "admin_list":
                self.rpc("list", "list_services")
            elif kind == "health":
                self.get("health", "/health", {})
            elif kind == "public":
                self.get("public", "/ows/proxy/soak", {"service": "WPS", "request": "GetCapabilities"})
            elif kind == "missing":
                self.execute("missing", None)
            elif kind == "garbage":
                self.execute("garbage", garbage_token())
            else:
                token = self.tokens.pick(kind)
                if token is not None:
                    self.execute(kind, token)

    def get(self, kind: str, path: str, params: dict, headers: Optional[dict] = None) -> None:
        rid = self.rid(kind)
        start = time.time()
        try:
            answer = self.session.get(self.base + path, params={**params, "rid": rid}, headers=headers,
                                      timeout=CLIENT_TIMEOUT)
            answer.content  # noqa: B018 (read the whole answer)
            busy = answer.status_code == 503 and "Retry-After" in answer.headers
            self.record(rid, kind, BUSY if busy else str(answer.status_code), start)
        except requests.RequestException as exc:
            self.record(rid, kind, f"error:{type(exc).__name__}", start)

    def execute(self, kind: str, token: Optional[str]) -> None:
        params = {"service": "WPS", "request": "Execute", "version": "1.0.0", "identifier": "echo"}
        headers = {}
        if token is not None:
            where = random.randrange(4)
            if where == 0:
                params["access_token"] = token
            elif where == 1:
                params["token"] = token
            elif where == 2:
                headers["Access-Token"] = token.encode("utf-8").decode("latin-1")
            else:
                headers["Authorization"] = "Bearer " + token.encode("utf-8").decode("latin-1")
        self.get(kind, "/ows/proxy/soak", params, headers)

    def rpc(self, kind: str, method: str, *args):
        rid = self.rid(kind)
        start = time.time()
        try:
            answer = self.session.post(self.base + "/RPC2", data=xmlrpc.client.dumps(args, method), auth=self.admin,
                                       headers={"Content-Type": "text/xml"}, timeout=CLIENT_TIMEOUT)
            if answer.status_code != 200:
                self.record(rid, kind, str(answer.status_code), start)
                return None
            result = xmlrpc.client.loads(answer.content)[0][0]
        except xmlrpc.client.Fault as fault:
            self.record(rid, kind, f"fault:{fault.faultCode}", start)
            return None
        except (requests.RequestException, xmlrpc.client.ResponseError) as exc:
            self.record(rid, kind, f"error:{type(exc).__name__}", start)
            return None
        self.record(rid, kind, "ok", start)
        return result


# -- the processes -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def soak_ini(workdir: Path, port: int, db_path: Path, password: str) -> Path:
    """``production.ini`` with what this run needs changed: address, SQLite file, admin password."""
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "production.ini")
    app = parser["app:main"]
    app["twitcher.url"] = f"http://127.0.0.1:{port}"
    app["twitcher.db_url"] = f"sqlite:///{db_path}"
    app["twitcher.wps"] = "false"
    app["twitcher.password"] = password
    parser["server:main"]["listen"] = f"127.0.0.1:{port}"
    path = workdir / "twitcher.ini"
    with open(path, "w") as out:
        parser.write(out)
    return path


class Child:
    """A child process in its own session, so that stopping it stops whatever it started."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path, env: Optional[dict] = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(list(command), cwd=ROOT, env={**os.environ, **(env or {})},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        stop_process_group(self.proc)


def wait_until_up(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log}")
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not answer within {timeout:.0f} s; see {child.log}")


def _process_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def process_tree(pid: int) -> List[int]:
    """``pid`` and every process below it: granian's workers are children of ``pserve``."""
    parents: Dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def rss_kib(pid: int) -> int:
    """Resident memory of Twitcher: the server process and all its workers together."""
    return sum(_process_rss_kib(p) for p in process_tree(pid))


#: The locker: exclusive POSIX locks on the eight lock bytes of SQLite's WAL index (write,
#: checkpoint, recover and the five read marks, offsets 120-127 of the -shm file), taken as soon as
#: no Twitcher transaction holds one, held for the outage, then released by exiting.
LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
deadline = time.monotonic() + 10
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120, os.SEEK_SET)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("could not take the locks")
        time.sleep(0.001)
print(time.time(), flush=True)
time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)
"""


def outage(db_path: Path, seconds: float, window: Dict[str, float]) -> None:
    """Take the store away for ``seconds``; ``window`` gets its real start and end (wall clock)."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, f"{db_path}-shm", str(seconds)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = proc.communicate(timeout=seconds + 30)[0].split()
    except subprocess.TimeoutExpired:
        proc.kill()
        lines = proc.communicate()[0].split()
    if len(lines) >= 2:
        window["start"], window["end"] = float(lines[0]), float(lines[1])


# -- the verdict ---------------------------------------------------------------------------------

def analyse(outcomes: List[Outcome], sent: Dict[str, str], record_path: Path, window: Dict[str, float],
            rss: Dict[str, int], rss_bound_kib: int) -> Tuple[dict, List[str]]:
    """The summary of a run and the list of its violations (empty: the run passed)."""
    violations: List[str] = []
    received = Counter()
    for line in record_path.read_text().splitlines():
        received[line.split(" ", 1)[0]] += 1
    let_through = sorted(rid for rid in received if sent.get(rid) in BAD_TOKENS)
    unknown = sorted(rid for rid in received if rid not in sent and rid != "startup")
    if let_through:
        violations.append(f"{len(let_through)} requests without a valid token reached the backend, "
                          f"e.g. {let_through[:5]} ({[sent[r] for r in let_through[:5]]})")
    if unknown:
        violations.append(f"the backend received {len(unknown)} requests the driver never sent, e.g. {unknown[:5]}")
    lost = [o.rid for o in outcomes if o.kind == "valid" and o.answer == "200" and o.rid not in received]
    if lost:
        violations.append(f"{len(lost)} successful Execute requests are missing from the backend's record")

    start, end = window.get("start"), window.get("end")
    if start is None:
        violations.append("the outage did not happen (the locker could not take the locks)")
        start = end = float("inf")
    by_kind: Dict[str, Counter] = {}
    unexpected: Counter = Counter()
    outage_latencies, busy_latencies, resumed = [], [], None
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.answer] += 1
        during = o.end >= start and o.start <= end + RESUME_GRACE
        unavailable = o.answer in ("503", STORE_FAULT)
        if o.answer == BUSY and o.kind in PROXIED:
            busy_latencies.append(o.end - o.start)
        elif unavailable and during:
            outage_latencies.append(o.end - o.start)
        elif o.answer != EXPECTED[o.kind]:
            unexpected[(o.kind, o.answer, "during the outage" if during else "outside the outage")] += 1
        if o.kind == "valid" and o.answer == "200" and o.start > end and (resumed is None or o.end < resumed):
            resumed = o.end
    for (kind, answer, when), count in sorted(unexpected.items()):
        violations.append(f"{count} x {kind} answered {answer} {when} (expected {EXPECTED[kind]})")
    if outage_latencies and statistics.median(outage_latencies) > SLOW_503:
        violations.append(f"503 answers during the outage took {statistics.median(outage_latencies):.1f} s "
                          f"(median): the store was waited for, not reported")
    if busy_latencies and statistics.median(busy_latencies) > SLOW_503:
        violations.append(f"'busy' answers took {statistics.median(busy_latencies):.1f} s (median): "
                          f"a request beyond the bound waited instead of being refused at once")
    if start != float("inf") and not outage_latencies:
        violations.append("no request was refused with 503 during the outage: was the store really gone?")
    if start != float("inf") and resumed is None:
        violations.append("no Execute with a valid token succeeded after the outage: the service did not resume")
    growth = rss["end"] - rss["start"]
    if growth > rss_bound_kib:
        violations.append(f"Twitcher's RSS grew by {growth / 1024:.1f} MB (bound {rss_bound_kib / 1024:.0f} MB)")

    answers = Counter(o.answer for o in outcomes)
    duration = max(o.end for o in outcomes) - min(o.start for o in outcomes) if outcomes else 0
    summary = {
        "requests": len(outcomes), "per_second": round(len(outcomes) / duration) if duration else 0,
        "answers": dict(sorted(answers.items())),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "errors": sum(n for a, n in answers.items() if a.startswith("error:")),
        "backend_received": sum(received.values()), "let_through": len(let_through),
        "outage_seconds": round(end - start, 1) if end != float("inf") else None,
        "outage_503": len(outage_latencies),
        "outage_503_latency_s": _quantiles(outage_latencies),
        "busy_503": len(busy_latencies), "busy_503_latency_s": _quantiles(busy_latencies),
        "resumed_after_s": round(resumed - end, 2) if resumed is not None and end != float("inf") else None,
        "rss_mb": {k: round(v / 1024, 1) for k, v in rss.items()},
        "latency_s": _quantiles([o.end - o.start for o in outcomes if not o.answer.startswith("error:")]),
    }
    return summary, violations


def _quantiles(values: List[float]) -> Optional[dict]:
    if not values:
        return None
    values = sorted(values)
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 3)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1], 3)}


def print_summary(summary: dict, violations: List[str]) -> None:
    print("\nsoak summary")
    for key, value in summary.items():
        if key == "by_kind":
            print("  answers by kind:")
            for kind, answers in value.items():
                print(f"    {kind:<10} {answers}")
        else:
            print(f"  {key}: {value}")
    print("\nPASSED" if not violations else "\nFAILED:\n  " + "\n  ".join(violations))


# -- the run -------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="length of the load (default 600)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--outage", type=float, default=30, help="seconds the store is gone, half-way (default 30)")
    parser.add_argument("--rss-bound-mb", type=float, default=32, help="allowed RSS growth of Twitcher (default 32)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, ini, record)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="twitcher-soak-"))
    db_path, record = workdir / "twitcher.sqlite", workdir / "backend-record.txt"
    password = secrets.token_urlsafe(16)
    tw_port, be_port = free_port(), free_port()
    base = f"http://127.0.0.1:{tw_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWITCHER_")}
    children: List[Child] = []
    try:
        backend = Child("backend", [sys.executable, "-m", "bench.soak_backend", str(be_port)], workdir,
                        {**env, "SOAK_RECORD": str(record)})
        children.append(backend)
        ini = soak_ini(workdir, tw_port, db_path, password)
        twitcher = Child("twitcher", [str(Path(sys.executable).with_name("pserve")), str(ini)], workdir, env)
        children.append(twitcher)
        wait_until_up(f"http://127.0.0.1:{be_port}/?rid=startup", backend)
        wait_until_up(base + "/", twitcher)
        admin = xmlrpc.client.ServerProxy(f"http://admin:{password}@127.0.0.1:{tw_port}/RPC2")
        admin.register_service(f"http://127.0.0.1:{be_port}/wps", {"name": "soak", "type": "wps"})
        tokens = Tokens()
        lifetime = (args.seconds + 900) / 3600
        for _ in range(32):
            tokens.add("valid", admin.generate_token(lifetime)["access_token"])
            revoked = admin.generate_token(lifetime)["access_token"]
            admin.revoke_token(revoked)
            tokens.add("revoked", revoked)
            short = admin.generate_token(1 / 3600)
            tokens.add("expiring", short["access_token"], short["expires_at"] + 2)

        outcomes: List[Outcome] = []
        sent: Dict[str, str] = {}
        started = time.time()
        deadline = started + args.seconds
        clients = [Client(n, base, password, tokens, deadline, outcomes, sent) for n in range(args.clients)]
        for client in clients:
            client.start()
        print(f"soak: {args.clients} clients for {args.seconds:.0f} s against {base} (pid {twitcher.proc.pid}), "
              f"store outage of {args.outage:.0f} s half-way; working directory {workdir}", flush=True)
        rss = {"start": 0, "peak": 0, "end": 0}
        window: Dict[str, float] = {}
        locker = None
        while time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
            now = time.time() - started
            current = rss_kib(twitcher.proc.pid)
            rss["peak"] = max(rss["peak"], current)
            if not rss["start"] and now >= min(WARM_UP, args.seconds / 4):
                rss["start"] = current
            if locker is None and now >= (args.seconds - args.outage) / 2:
                locker = threading.Thread(target=outage, args=(db_path, args.outage, window), daemon=True)
                locker.start()
            print(f"  {now:5.0f} s  {len(outcomes):7d} answers  rss {current / 1024:6.1f} MB"
                  f"{'  store gone' if locker and locker.is_alive() else ''}", flush=True)
        for client in clients:
            client.join(timeout=CLIENT_TIMEOUT + 5)
        if locker is not None:
            locker.join(timeout=args.outage + 40)
        rss["end"] = rss_kib(twitcher.proc.pid)
        summary, violations = analyse(outcomes, dict(sent), record, window, rss, int(args.rss_bound_mb * 1024))
        print_summary(summary, violations)
        return 1 if violations else 0
    finally:
        for child in reversed(children):
            child.stop()
        if not args.keep:
            for path in sorted(workdir.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
