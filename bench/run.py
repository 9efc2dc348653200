"""The proxy benchmark (``make bench``): the fake backend, Twitcher as operators run it, wrk, a table.

Everything runs on 127.0.0.1. The fake backend (:mod:`bench.backend`, gunicorn) and Twitcher served
as production serves it (``pserve production.ini``, as shipped), twice: with metrics and access
log off, and on. The direct and proxied targets are measured in the same run, interleaved,
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
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from bench.backend import expected_sha256  # noqa: E402
from bench.load import RssWatch, cpu_seconds, download, median_result, run_wrk  # noqa: E402
from bench.nginx import INSTALL_HINT as NGINX_INSTALL_HINT  # noqa: E402
from bench.nginx import check_config, nginx_binary, nginx_command, write_config  # noqa: E402
from bench.profile import profile_markdown, profile_twitcher  # noqa: E402
from bench.report import evaluate, markdown, rst_tables  # noqa: E402
from bench.scenarios import (  # noqa: E402
    NGINX_TARGETS,
    POST_EXECUTE,
    SCENARIOS,
    SERVICE_NAME,
    Targets,
    probe,
    register,
    request_for,
)
from bench.servers import (  # noqa: E402
    ROOT,
    Server,
    clean_env,
    fake_backend,
    free_port,
    gunicorn_command,
    listening_socket,
    pserve_command,
    twitcher_ini,
    uwsgi_command,
)
from bench.tokens import token_check_cost  # noqa: E402
from twitcher.admin.client import ini_settings  # noqa: E402
from twitcher.dataplane.nginxconf import DATA_BUFFER, Front, nginx_config  # noqa: E402
from twitcher.ops.runner import default_workers  # noqa: E402
from twitcher.settings import parse_settings  # noqa: E402
from twitcher.store import open_store  # noqa: E402

log = logging.getLogger(__name__)

RESULTS_DIR = ROOT / "bench" / "results"
WRK_INSTALL_HINT = "wrk is not installed: `sudo apt-get install -y wrk` (Debian/Ubuntu), then run again."


#: Twitcher with metrics and the access log on keeps at least this share of its rate with both off.
OPS_TOLERANCE = 0.95
#: Downloads through the nginx data plane over which Twitcher's CPU per download is measured.
CPU_DOWNLOADS = 20
#: The ratios computed per round: name, (target measured, target it is divided by).
REQUEST_RATIOS = (("ratio", ("twitcher", "direct")), ("ops_ratio", ("twitcher_ops", "twitcher")),
                  ("nginx_ratio", ("twitcher_nginx", "direct")), ("nginx_vs_python", ("twitcher_nginx", "twitcher")),
                  # what nginx alone keeps of the backend: the ceiling of any nginx data plane
                  ("plain_ratio", ("nginx_plain", "direct")), ("nginx_vs_plain", ("twitcher_nginx", "nginx_plain")))
DOWNLOAD_RATIOS = REQUEST_RATIOS


def _orders(names: List[str], rnd: int) -> List[str]:
    """The targets of round ``rnd`` in turn: each starts a round, so a slow moment hits all alike."""
    shift = rnd % len(names)
    return names[shift:] + names[:shift]


def count_served(result: dict, scenario, target: str) -> int:
    """Keep only the answers with the expected status in ``result["rps"]``; the number of them.

    wrk counts every answer. A proxy that answers ``503`` at once when its per-service limit is
    reached (``twitcher.max_inflight_per_service``) would count its refusals as served requests:
    until 2026-12-06 a third of the proxied "requests per second" were such 503s. An expected
    refusal (the ``401`` scenario) is counted whole: it forwards nothing, so no limit applies.
    """
    expected = scenario.direct_status if target in ("direct", "nginx_plain") else scenario.proxy_status
    other = result["errors"]["status"] if expected < 400 else 0
    served = result["requests"] - other
    result["rps"] = served / (result["duration_us"] / 1e6)
    result["other_answers"] = other
    return served


def measure_requests(targets: Targets, args: argparse.Namespace, bases: Dict[str, str],
                     workers: Dict[str, List[int]]) -> Dict[str, dict]:
    """wrk for every scenario on every target, interleaved, ``args.rounds`` times (after a warm-up).

    Also the CPU time each server's workers spent per request: on a small machine the proxy's CPU
    cost is what it takes away from the backend and the load generator.
    """
    runs: Dict[str, Dict[str, List[dict]]] = {s.key: {t: [] for t in bases} for s in SCENARIOS}
    for rnd in range(-1, args.rounds):  # round -1 warms up every server and is thrown away
        for scenario in SCENARIOS:
            for target in _orders(list(bases), rnd):
                url, headers = request_for(scenario, targets, bases[target])
                body = targets.body_file if scenario.method == "POST" else None
                duration = 1 if rnd < 0 else args.duration
                cpu_before = {who: cpu_seconds(pids) for who, pids in workers.items()}
                result = run_wrk(url, scenario.method, headers, body, duration, args.connections, args.threads)
                served = count_served(result, scenario, target)
                result["cpu_ms_per_request"] = {
                    who: 1000 * (cpu_seconds(pids) - cpu_before[who]) / max(served, 1)
                    for who, pids in workers.items()
                    if who in ("backend", target) or (who == "nginx" and target in NGINX_TARGETS)}
                if rnd >= 0:
                    runs[scenario.key][target].append(result)
                    print(f"  round {rnd + 1} {scenario.key:13s} {target:12s} {result['rps']:9.0f} req/s", flush=True)
    results = {key: {t: median_result(r) for t, r in per_target.items()} for key, per_target in runs.items()}
    for key, per_target in runs.items():
        # Each round pairs runs made seconds apart: the median of their ratios is less shaken by
        # a busy machine than the ratio of two medians.
        for name, (top, bottom) in REQUEST_RATIOS:
            if top in per_target and bottom in per_target:
                ratios = [t["rps"] / d["rps"] for d, t in zip(per_target[bottom], per_target[top])]
                results[key][name] = statistics.median(ratios)
                results[key][f"{name}_rounds"] = [round(r, 3) for r in ratios]
    return results


def measure_download(targets: Targets, args: argparse.Namespace, bases: Dict[str, str],
                     workers: Dict[str, List[int]]) -> dict:
    """MB/s for the large file direct and through Twitcher, the workers' peak RSS growth, the sha256."""
    size = args.download_mb
    path = f"/outputs/{size}mb.bin"
    proxies = [t for t in bases if t != "direct"]
    expected = expected_sha256(size)
    result: Dict[str, object] = {"size_mb": size, "sha256_expected": expected}
    watches = {t: RssWatch(workers[t]) for t in proxies}
    speeds: Dict[str, List[float]] = {t: [] for t in bases}
    cpu_ms: Dict[str, List[float]] = {t: [] for t in proxies}  # worker CPU per 100 MB delivered

    def url_of(target: str) -> str:
        unprotected = target in ("direct", "nginx_plain")
        return targets.file_base(target) + path + ("" if unprotected else f"?access_token={targets.token}")

    for rnd in range(args.rounds):
        for target in _orders(list(bases), rnd):
            proxied = target != "direct"
            cm = watches[target].watch() if proxied else contextlib.nullcontext()
            cpu_before = cpu_seconds(workers[target]) if proxied else 0.0
            with cm:
                seconds, nbytes, _ = download(url_of(target), verify=False)
            if proxied:
                cpu_ms[target].append(1000 * (cpu_seconds(workers[target]) - cpu_before) / (nbytes / 1e8))
            if nbytes != size * 1024 * 1024:
                raise RuntimeError(f"{target} download delivered {nbytes} bytes instead of {size} MB")
            speeds[target].append(nbytes / 1e6 / seconds)
            print(f"  round {rnd + 1} download      {target:12s} {speeds[target][-1]:9.0f} MB/s", flush=True)
    for target in bases:
        _, _, digest = download(url_of(target), verify=True)
        result[f"{target}_sha256_ok"] = digest == expected
        result[f"{target}_mb_s"] = round(statistics.median(speeds[target]), 1)
        result[f"{target}_rounds_mb_s"] = [round(s, 1) for s in speeds[target]]
    for name, (top, bottom) in DOWNLOAD_RATIOS:
        if top in speeds and bottom in speeds:
            result[name] = statistics.median(t / d for d, t in zip(speeds[bottom], speeds[top]))
    if "twitcher_nginx" in bases:
        # Twitcher's CPU for a download nginx carries is a decision, under the 10 ms tick of
        # /proc/<pid>/stat: measured over many downloads, and divided.
        before = cpu_seconds(workers["twitcher_nginx"])
        for _ in range(CPU_DOWNLOADS):
            download(url_of("twitcher_nginx"), verify=False)
        result["twitcher_nginx_cpu_ms_per_download"] = round(
            1000 * (cpu_seconds(workers["twitcher_nginx"]) - before) / CPU_DOWNLOADS, 2)
    for target in proxies:
        result[f"{target}_cpu_ms_per_100mb"] = round(statistics.median(cpu_ms[target]), 1)
        result[f"{target}_peak_rss_growth_mb"] = round(watches[target].growth_kib / 1024, 1)
        result[f"{target}_peak_rss_mb"] = round(watches[target].peak_kib / 1024, 1)
        result[f"{target}_rss_samples"] = watches[target].samples
        result["rss_kernel_peak_used"] = watches[target].kernel_peak
    return result


def machine() -> dict:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "wrk": wrk_version.strip()}


def start_twitcher(name: str, args: argparse.Namespace, workdir: Path, env: Dict[str, str], db_url: str,
                   extra_env: Dict[str, str]) -> Tuple[Server, int]:
    """Start Twitcher as ``args.twitcher_server`` says; the server and how many workers it runs.

    ``pserve``: ``production.ini`` as shipped, only what the environment may override changed
    (port, public URL, store, password); the rest (uWSGI, gunicorn) from an ini derived from it.
    """
    env = {**env, "TWITCHER_DB_URL": db_url, "TWITCHER_PASSWORD": secrets.token_urlsafe(16),
           "TWITCHER_WPS": "false", **extra_env}
    if args.twitcher_server == "pserve":
        port = free_port()
        env["TWITCHER_LISTEN"] = f"127.0.0.1:{port}"
        env.setdefault("TWITCHER_URL", f"http://127.0.0.1:{port}")  # behind nginx: nginx's URL
        server = Server(name, pserve_command(ROOT / "production.ini"), workdir, env, port=port,
                        worker_marker="spawn_main")
        return server, default_workers()
    sock = listening_socket()
    ini = twitcher_ini(workdir / name, sock.getsockname()[1], db_url)
    env["TWITCHER_INI"] = str(ini)
    n = args.twitcher_workers or args.workers
    if args.twitcher_server == "uwsgi":
        command = uwsgi_command(sock.fileno()) + [
            "--paste", f"config:{ini}", "--paste-logger", "--processes", str(n),
            "--threads", str(args.twitcher_threads)]
    else:
        command = gunicorn_command(sock.fileno()) + [
            "--workers", str(n), "--worker-class", args.twitcher_worker_class, "--threads", str(args.twitcher_threads),
            "twitcher.wsgi:application"]
    return Server(name, command, workdir, env, sock=sock), n


#: nginx worker processes in the benchmark (Debian's default is one per core: "auto").
NGINX_WORKERS = os.cpu_count() or 1


def start_nginx(binary: str, workdir: Path, env: Dict[str, str], services, secret: str, port: int,
                plain_port: int, app_port: int, backend_port: int) -> Server:
    """nginx with the generated configuration (``twitcherctl nginx-config``, from production.ini's
    settings) on ``port``, and a plain ``proxy_pass`` to the backend on ``plain_port``."""
    settings = parse_settings({**ini_settings(str(ROOT / "production.ini")), "twitcher.rpcinterface": "false",
                               "twitcher.url": f"http://127.0.0.1:{port}", "twitcher.front_secret": secret},
                              environ={})
    generated = nginx_config(services, settings, Front(f"127.0.0.1:{port}", f"127.0.0.1:{app_port}"))
    # The yardstick: nginx alone in front of the backend, buffered as the data locations are.
    plain = (f"upstream bench_backend {{\n    server 127.0.0.1:{backend_port};\n    keepalive 16;\n}}\n"
             f"server {{\n    listen 127.0.0.1:{plain_port};\n    location / {{\n"
             "        proxy_pass http://bench_backend;\n        proxy_http_version 1.1;\n"
             '        proxy_set_header Connection "";\n        proxy_buffering off;\n'
             f"        proxy_buffer_size {DATA_BUFFER};\n        proxy_buffers 4 {DATA_BUFFER};\n"
             f"        proxy_busy_buffers_size {DATA_BUFFER};\n    }}\n}}\n")
    prefix = workdir / "nginx"
    write_config(prefix, generated + "\n" + plain, workers=str(NGINX_WORKERS), access_log=False)
    checked = check_config(binary, prefix)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t refused the generated configuration: {checked.stderr}")
    return Server("nginx", nginx_command(binary, prefix), workdir, env, port=port)


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
                        help="worker processes of Twitcher under uWSGI or gunicorn (default: as --workers)")
    parser.add_argument("--twitcher-server", choices=("pserve", "uwsgi", "gunicorn"), default="pserve",
                        help="the server of Twitcher: pserve production.ini as shipped (default), or uWSGI "
                             "(the uwsgi extra) or gunicorn with --twitcher-workers and --twitcher-threads")
    parser.add_argument("--no-ops", action="store_true",
                        help="skip the second Twitcher with metrics and the access log on")
    parser.add_argument("--no-nginx", action="store_true",
                        help="skip the nginx data plane and the plain nginx (measured when nginx is installed)")
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

        backend = fake_backend(workdir, env, args.workers, args.backend_threads)
        stack.callback(backend.stop)
        db_path = workdir / "twitcher.sqlite"
        db_url = f"sqlite:///{db_path}"
        direct = backend.base_url + "/wps"
        store = open_store(db_url)
        token = register(store, backend.base_url)
        services = store.list_services()
        store.close()

        body_file = workdir / "execute.xml"
        body_file.write_bytes(POST_EXECUTE)
        servers = {"twitcher": start_twitcher("twitcher", args, workdir, env, db_url, {})}
        if not args.no_ops:
            # The same server with metrics and the access log on (written to its log file).
            servers["twitcher_ops"] = start_twitcher("twitcher_ops", args, workdir, env, db_url,
                                                     {"TWITCHER_METRICS": "true", "TWITCHER_ACCESS_LOG": "true"})
        nginx = None if args.no_nginx else nginx_binary()
        if nginx is None and not args.no_nginx:
            print(f"{NGINX_INSTALL_HINT}; the nginx data plane is not measured", flush=True)
        if nginx:
            # The same server in the nginx data plane, behind the configuration twitcherctl writes.
            nginx_port, plain_port, secret = free_port(), free_port(), secrets.token_urlsafe(24)
            servers["twitcher_nginx"] = start_twitcher(
                "twitcher_nginx", args, workdir, env, db_url,
                {"TWITCHER_DATA_PLANE": "nginx", "TWITCHER_FRONT_SECRET": secret,
                 "TWITCHER_URL": f"http://127.0.0.1:{nginx_port}"})
        for server, _ in servers.values():
            stack.callback(server.stop)
        proxy_of = {name: f"{server.base_url}/ows/proxy/{SERVICE_NAME}" for name, (server, _) in servers.items()}
        targets = Targets(direct=direct, proxy=proxy_of["twitcher"], token=token, body_file=body_file,
                          ops_proxy=proxy_of.get("twitcher_ops"))
        if nginx:
            front = start_nginx(nginx, workdir, env, services, secret, nginx_port, plain_port,
                                servers["twitcher_nginx"][0].port, backend.port)
            stack.callback(front.stop)
            targets.nginx_proxy = f"{front.base_url}/ows/proxy/{SERVICE_NAME}"
            targets.plain_nginx = f"http://127.0.0.1:{plain_port}/wps"
        backend.wait_until_serving()
        workers = {"backend": backend.workers(args.workers)}
        for name, (server, expected) in servers.items():
            server.wait_until_serving()
            workers[name] = server.workers(expected)
            print(f"{name} {server.base_url} (pid {server.proc.pid}, workers {workers[name]})", flush=True)
        if nginx:
            front.wait_until_serving()
            workers["nginx"] = workers["nginx_plain"] = front.workers(NGINX_WORKERS)
            print(f"nginx {front.base_url} and plain {targets.plain_nginx} (pid {front.proc.pid}, "
                  f"workers {workers['nginx']})", flush=True)
        print(f"backend {backend.base_url} (pid {backend.proc.pid}); logs in {workdir}", flush=True)

        problems = [p for s in SCENARIOS if (p := probe(s, targets, targets.direct, s.direct_status))]
        if problems:
            raise RuntimeError("the fake backend misbehaves: " + "; ".join(problems))
        bases = {"direct": targets.direct}
        results["proxy_problems"] = []
        for name in servers:
            proxy_problems = [p for s in SCENARIOS if (p := probe(s, targets, targets.bases[name], s.proxy_status))]
            if proxy_problems:
                print(f"{name} is not ready, not measured: " + "; ".join(proxy_problems), flush=True)
                results["proxy_problems"] += proxy_problems
            else:
                bases[name] = targets.bases[name]

        if targets.plain_nginx and "twitcher_nginx" in bases:
            bases["nginx_plain"] = targets.plain_nginx  # unprotected, like direct: its baseline
        print("requests (wrk):", flush=True)
        results["requests"] = measure_requests(targets, args, bases, workers)
        print(f"download ({args.download_mb} MB):", flush=True)
        results["download"] = measure_download(targets, args, bases, workers)
        if args.profile and "twitcher" in bases:
            print(f"profile ({args.profile} s per request type, py-spy):", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            results["profile"] = profile_twitcher(targets, args, workers["twitcher"], args.out)
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
