"""The proxy benchmark (``make bench``): the fake backend and Twitcher under gunicorn, wrk, a table.

Everything runs on 127.0.0.1. The fake backend (:mod:`bench.backend`) and Twitcher are served the
way production serves them (gunicorn, 2 workers with threads, Twitcher from an ini derived from
``production.ini``); the direct and proxied targets are measured in the same run, interleaved,
several rounds, and medians are reported. Results go to ``bench/results/latest.json``
and ``latest.md``. All child processes are stopped on exit, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from bench.backend import expected_sha256  # noqa: E402
from bench.load import RssWatch, cpu_seconds, download, median_result, run_wrk  # noqa: E402
from bench.profile import profile_markdown, profile_twitcher  # noqa: E402
from bench.report import evaluate, markdown, rst_tables  # noqa: E402
from bench.scenarios import POST_EXECUTE, SCENARIOS, SERVICE_NAME, Targets, probe, request_for  # noqa: E402
from bench.servers import ROOT, Server, clean_env, listening_socket, twitcher_ini  # noqa: E402
from bench.tokens import token_check_cost  # noqa: E402
from twitcher.services import service_from_registration  # noqa: E402
from twitcher.store import open_store  # noqa: E402
from twitcher.tokens import new_token  # noqa: E402

log = logging.getLogger(__name__)

RESULTS_DIR = ROOT / "bench" / "results"
WRK_INSTALL_HINT = "wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu), then run again."


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
