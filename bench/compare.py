"""Two versions of Twitcher side by side: the working tree against a commit, in one run.

``make bench`` compares Twitcher with the backend; this compares Twitcher with itself. On a
shared two-core machine the backend's own rate swings by a fifth from one run to the next, and a
change worth a tenth cannot be told from that noise by comparing two ``make bench`` runs. Here both
versions serve ``production.ini`` as shipped (their own copy of it), behind the same backend and
store, and wrk loads them in turn, several rounds, each round starting with the other version:

    python -m bench.compare --base HEAD                # what the uncommitted changes do
    python -m bench.compare --base main~3 --rounds 7   # the last three commits together
    python -m bench.compare --work-env TWITCHER_METRICS=true --work-env TWITCHER_ACCESS_LOG=true

The table gives each version's served requests per second and CPU per request (its workers),
and the median over the rounds of *working tree / base*, with its range.
"""
from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import cpu_seconds, download, run_wrk  # noqa: E402
from bench.run import count_served  # noqa: E402
from bench.scenarios import POST_EXECUTE, SCENARIOS, SERVICE_NAME, Targets, probe, register, request_for  # noqa: E402
from bench.servers import Server, clean_env, fake_backend, free_port, pserve_command  # noqa: E402
from twitcher.ops.runner import default_workers  # noqa: E402
from twitcher.store import open_store  # noqa: E402

VERSIONS = ("base", "work")


def export_tree(ref: str, into: Path) -> Path:
    """The package and production.ini of commit ``ref``, written out under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "twitcher", "production.ini"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start(name: str, tree: Path, workdir: Path, env: Dict[str, str]) -> Server:
    """``pserve production.ini`` of ``tree``, its package first on the path (workers inherit it)."""
    port = free_port()
    env = {**env, "TWITCHER_LISTEN": f"127.0.0.1:{port}", "TWITCHER_URL": f"http://127.0.0.1:{port}",
           "TWITCHER_PASSWORD": secrets.token_urlsafe(16), "TWITCHER_WPS": "false"}
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    return Server(name, pserve_command(tree / "production.ini"), workdir, env, port=port,
                  worker_marker="spawn_main", cwd=tree)


Runs = Dict[str, List[Tuple[float, float]]]  # version -> (rate, CPU) of each round


def _orders(rnd: int) -> Tuple[str, ...]:
    """The versions in turn in round ``rnd``: each starts every other round."""
    return VERSIONS if rnd % 2 == 0 else VERSIONS[::-1]


def summarise(label: str, runs: Runs) -> dict:
    """Each version's median rate and CPU, and the median and range of the per-round work / base."""
    ratios = [work[0] / base[0] for base, work in zip(runs["base"], runs["work"])]
    row = {"label": label, "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    for version in VERSIONS:
        row[f"{version}_rate"] = statistics.median(r[0] for r in runs[version])
        row[f"{version}_cpu_ms"] = statistics.median(r[1] for r in runs[version])
    print(f"  {label[:40]:40s} work/base {row['ratio']:.3f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})",
          flush=True)
    return row


def measure(targets: Dict[str, Targets], pids: Dict[str, List[int]], keys: Sequence[str], rounds: int,
            duration: int, connections: int) -> List[dict]:
    """Served requests per second and CPU ms per request of both versions, for each request type."""
    rows = []
    for scenario in (s for s in SCENARIOS if not keys or s.key in keys):
        runs: Runs = {v: [] for v in VERSIONS}
        for rnd in range(-1, rounds):  # round -1 warms both up
            for version in _orders(rnd):
                t = targets[version]
                url, headers = request_for(scenario, t, t.proxy)
                before = cpu_seconds(pids[version])
                result = run_wrk(url, scenario.method, headers, t.body_file if scenario.method == "POST" else None,
                                 1 if rnd < 0 else duration, connections, 2)
                served = count_served(result, scenario, "twitcher")
                if rnd >= 0:
                    cpu_ms = 1000 * (cpu_seconds(pids[version]) - before)
                    runs[version].append((result["rps"], cpu_ms / max(served, 1)))
        rows.append(summarise(scenario.label, runs))
    return rows


def measure_download(targets: Dict[str, Targets], pids: Dict[str, List[int]], size_mb: int, rounds: int) -> dict:
    """MB/s of one client downloading ``size_mb`` MB through each version in turn, and CPU ms per 100 MB."""
    runs: Runs = {v: [] for v in VERSIONS}
    for rnd in range(-1, rounds):
        for version in _orders(rnd):
            t = targets[version]
            before = cpu_seconds(pids[version])
            seconds, nbytes, _ = download(f"{t.proxy}/outputs/{size_mb}mb.bin?access_token={t.token}", verify=False)
            if nbytes != size_mb * 1024 * 1024:
                raise RuntimeError(f"{version} delivered {nbytes} bytes of {size_mb} MB")
            if rnd >= 0:
                cpu_ms = 1000 * (cpu_seconds(pids[version]) - before)
                runs[version].append((nbytes / 1e6 / seconds, cpu_ms / (nbytes / 1e8)))
    return summarise(f"{size_mb} MB download (MB/s; CPU per 100 MB)", runs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare the working tree with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="",
                        help="request types, comma-separated (default: all; none: only the download)")
    parser.add_argument("--env", action="append", default=[], metavar="TWITCHER_KEY=VALUE",
                        help="a setting of both versions (e.g. TWITCHER_ACCESS_LOG=true)")
    parser.add_argument("--work-env", action="append", default=[], metavar="TWITCHER_KEY=VALUE",
                        help="a setting of the working tree's Twitcher only (e.g. TWITCHER_METRICS=true); "
                             "with --base HEAD and no changes, the cost of a setting")
    parser.add_argument("--download-mb", type=int, default=0, help="also compare a download of this size (MB)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="twitcher-compare-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        trees = {"base": export_tree(args.base, workdir / "base"), "work": ROOT}
        env = clean_env()
        backend = fake_backend(workdir, env, workers=2, threads=16)  # as make bench runs it
        stack.callback(backend.stop)
        db_url = f"sqlite:///{workdir / 'twitcher.sqlite'}"
        store = open_store(db_url)
        token = register(store, backend.base_url)
        store.close()
        body_file = workdir / "execute.xml"
        body_file.write_bytes(POST_EXECUTE)
        both, work_only = (dict(item.split("=", 1) for item in items) for items in (args.env, args.work_env))
        if any(not key.startswith("TWITCHER_") for key in (*both, *work_only)):
            parser.error("--env and --work-env take TWITCHER_KEY=VALUE")
        servers = {v: start(v, trees[v], workdir, {**env, "TWITCHER_DB_URL": db_url, **both,
                                                   **(work_only if v == "work" else {})})
                   for v in VERSIONS}
        for server in servers.values():
            stack.callback(server.stop)
        backend.wait_until_serving()
        targets, pids = {}, {}
        for version, server in servers.items():
            server.wait_until_serving()
            pids[version] = server.workers(default_workers())
            targets[version] = Targets(direct=backend.base_url + "/wps", token=token, body_file=body_file,
                                       proxy=f"{server.base_url}/ows/proxy/{SERVICE_NAME}")
            problems = [p for s in SCENARIOS if (p := probe(s, targets[version], targets[version].proxy,
                                                           s.proxy_status))]
            if problems:
                raise RuntimeError(f"{version} is not ready: {'; '.join(problems)}; see {server.logfile}")
        print(f"base {args.base} against the working tree, {args.rounds} rounds of {args.duration} s:", flush=True)
        keys = [k for k in args.only.split(",") if k]
        rows = [] if keys == ["none"] else measure(targets, pids, keys, args.rounds, args.duration, args.connections)
        if args.download_mb:
            rows.append(measure_download(targets, pids, args.download_mb, args.rounds))
    print("\n| request | base req/s | work req/s | work / base (range) | CPU ms/req base, work |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['base_rate']:.0f} | {r['work_rate']:.0f} | {r['ratio']:.3f} "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['base_cpu_ms']:.2f}, {r['work_cpu_ms']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
