"""The report: targets checked, Markdown tables, and the same as reStructuredText for the docs."""
from __future__ import annotations

from typing import List, Optional

from bench.scenarios import SCENARIOS

#: Token-check cost counts as "the same" when the median at the largest store is within this factor.
TOKEN_COST_TOLERANCE = 1.5
#: The least share of the direct backend's MB/s a download through Twitcher keeps.
DOWNLOAD_TARGET = 0.6
#: Twitcher with metrics and access log on keeps at least this share of its rate with both off.
OPS_TARGET = 0.95
#: The nginx data plane's download keeps at least this share of a plain nginx proxy_pass's MB/s.
NGINX_DOWNLOAD_TARGET = 0.9
#: Twitcher's CPU (all workers) for one download carried by nginx, in ms.
NGINX_DOWNLOAD_CPU_MS = 5.0
#: Capabilities, rewritten by Twitcher in both planes: the nginx plane keeps this share of the
#: Python plane's rate ("no slower"; 5 % for the noise of two runs on a shared machine).
NGINX_CAPS_TARGET = 0.95


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
        checks.append({"target": f"{dl['size_mb']} MB download: ratio >= {DOWNLOAD_TARGET}", "value": ratio,
                       "ok": ratio >= DOWNLOAD_TARGET and dl["twitcher_sha256_ok"]})
        checks.append({"target": "download: Twitcher worker peak RSS growth <= 32 MB",
                       "value": dl["twitcher_peak_rss_growth_mb"], "ok": dl["twitcher_peak_rss_growth_mb"] <= 32})
    else:
        checks.append({"target": f"{dl['size_mb']} MB download: ratio >= {DOWNLOAD_TARGET}", "value": None,
                       "ok": None})
    for scenario in SCENARIOS:
        ratio = results["requests"].get(scenario.key, {}).get("ops_ratio")
        if ratio is not None:
            checks.append({"target": f"{scenario.label}, metrics + access log on / off >= {OPS_TARGET}",
                           "value": ratio, "ok": ratio >= OPS_TARGET})
    if dl.get("ops_ratio") is not None:
        checks.append({"target": f"download, metrics + access log on / off >= {OPS_TARGET}",
                       "value": dl["ops_ratio"], "ok": dl["ops_ratio"] >= OPS_TARGET and dl["twitcher_ops_sha256_ok"]})
    checks += _nginx_checks(results)
    tokens = results["tokens"]
    if len(tokens) >= 2:
        ratio = tokens[-1]["median_us"] / tokens[0]["median_us"]
        checks.append({"target": f"token check: median at {tokens[-1]['size']:,} within "
                                 f"{TOKEN_COST_TOLERANCE}x of {tokens[0]['size']:,}",
                       "value": ratio, "ok": ratio <= TOKEN_COST_TOLERANCE})
    return checks


def _nginx_checks(results: dict) -> List[dict]:
    """The targets of the nginx data plane (issue 14), when it was measured."""
    checks: List[dict] = []
    for scenario in SCENARIOS:
        rows = results["requests"].get(scenario.key, {})
        if scenario.nginx_target is not None and "nginx_ratio" in rows:
            checks.append({"target": f"{scenario.label}, nginx plane / direct >= {scenario.nginx_target}",
                           "value": rows["nginx_ratio"], "ok": rows["nginx_ratio"] >= scenario.nginx_target})
    caps = results["requests"].get("getcaps", {})
    if "nginx_vs_python" in caps:
        checks.append({"target": f"GetCapabilities, nginx plane / Python plane >= {NGINX_CAPS_TARGET}",
                       "value": caps["nginx_vs_python"], "ok": caps["nginx_vs_python"] >= NGINX_CAPS_TARGET})
    dl = results["download"]
    if "nginx_vs_plain" in dl:
        checks.append({"target": f"{dl['size_mb']} MB download, nginx plane / plain nginx >= {NGINX_DOWNLOAD_TARGET}",
                       "value": dl["nginx_vs_plain"],
                       "ok": dl["nginx_vs_plain"] >= NGINX_DOWNLOAD_TARGET and dl["twitcher_nginx_sha256_ok"]})
        cpu = dl.get("twitcher_nginx_cpu_ms_per_download", download_cpu_ms(dl, "twitcher_nginx"))
        checks.append({"target": f"{dl['size_mb']} MB download, nginx plane: Twitcher CPU ms "
                                 f"< {NGINX_DOWNLOAD_CPU_MS:g}", "value": cpu, "ok": cpu < NGINX_DOWNLOAD_CPU_MS})
    return checks


def download_cpu_ms(dl: dict, target: str) -> float:
    """The CPU ms a target's workers spent on one whole download (measured per 100 MB)."""
    return dl[f"{target}_cpu_ms_per_100mb"] * dl["size_mb"] * 1.048576 / 100


def _not_served(row: dict) -> str:
    """The share of answers without the expected status (503 busy), counted out of req/s."""
    other = row.get("other_answers", 0)
    return f"{100 * other / row['requests']:.1f} %" if row.get("requests") else "-"


def _ratio(rows: dict, name: str) -> str:
    return f"{rows[name]:.2f}" if name in rows else "-"


def nginx_markdown(results: dict) -> List[str]:
    """The nginx data plane beside the Python plane, direct, and a plain nginx ``proxy_pass``."""
    if not any("twitcher_nginx" in results["requests"].get(s.key, {}) for s in SCENARIOS):
        return []
    lines = ["", "| request | direct req/s | plain nginx req/s | Python plane req/s | nginx plane req/s "
             "| plain nginx / direct | nginx plane / direct | nginx / plain nginx | nginx / Python "
             "| nginx plane p50 / p90 / p99 ms | CPU ms/req: Twitcher, nginx |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scenario in SCENARIOS:
        rows = results["requests"].get(scenario.key, {})
        if "twitcher_nginx" not in rows:
            continue
        row = rows["twitcher_nginx"]
        cpu = row["cpu_ms_per_request"]
        python = f"{rows['twitcher']['rps']:.0f}" if "twitcher" in rows else "-"
        plain = f"{rows['nginx_plain']['rps']:.0f}" if "nginx_plain" in rows else "-"
        lines.append(f"| {scenario.label} | {rows['direct']['rps']:.0f} | {plain} | {python} | {row['rps']:.0f} | "
                     f"{_ratio(rows, 'plain_ratio')} | {rows['nginx_ratio']:.2f} | {_ratio(rows, 'nginx_vs_plain')} | "
                     f"{_ratio(rows, 'nginx_vs_python')} | {row['p50_ms']:.1f} / {row['p90_ms']:.1f} / "
                     f"{row['p99_ms']:.1f} | {cpu.get('twitcher_nginx', 0):.2f}, {cpu.get('nginx', 0):.2f} |")
    dl = results["download"]
    if "twitcher_nginx_mb_s" in dl:
        lines += ["", "| download | MB/s | / direct | / plain nginx | CPU ms per download | sha256 |",
                  "|---|---:|---:|---:|---:|---|",
                  f"| {dl['size_mb']} MB direct | {dl['direct_mb_s']:.0f} | 1.00 | - | - | ok |"]
        if "nginx_plain_mb_s" in dl:
            lines.append(f"| {dl['size_mb']} MB, plain nginx proxy_pass | {dl['nginx_plain_mb_s']:.0f} | "
                         f"{dl['plain_ratio']:.2f} | 1.00 | nginx {download_cpu_ms(dl, 'nginx_plain'):.0f} | "
                         f"{'ok' if dl['nginx_plain_sha256_ok'] else 'WRONG'} |")
        if "twitcher_mb_s" in dl:
            lines.append(f"| {dl['size_mb']} MB, Python plane | {dl['twitcher_mb_s']:.0f} | {dl['ratio']:.2f} | "
                         f"- | Twitcher {download_cpu_ms(dl, 'twitcher'):.0f} | "
                         f"{'ok' if dl['twitcher_sha256_ok'] else 'WRONG'} |")
        lines.append(f"| {dl['size_mb']} MB, nginx plane | {dl['twitcher_nginx_mb_s']:.0f} | {dl['nginx_ratio']:.2f} | "
                     f"{dl.get('nginx_vs_plain', 0):.2f} | Twitcher "
                     f"{dl.get('twitcher_nginx_cpu_ms_per_download', download_cpu_ms(dl, 'twitcher_nginx')):.1f} | "
                     f"{'ok' if dl['twitcher_nginx_sha256_ok'] else 'WRONG'} |")
    return lines


def markdown(results: dict) -> str:
    """The tables of ``latest.md`` and of the docs page."""
    lines = [f"Run {results['started']} on {results['machine']['cores']} cores ({results['machine']['cpu']}), "
             f"Twitcher on {results['settings'].get('twitcher_server', 'gunicorn')}, "
             f"{results['settings']['connections']} connections, {results['settings']['rounds']} rounds of "
             f"{results['settings']['duration']} s; medians of the rounds, ratio: median of the per-round ratios.",
             ""]
    lines += ["| request | direct req/s | Twitcher req/s | ratio | direct p50 / p90 / p99 ms "
              "| Twitcher p50 / p90 / p99 ms | CPU ms/req: backend, Twitcher | Twitcher answers not served |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]

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
                     f"{rows['ratio']:.2f} | {lat(direct)} | {lat(proxied)} | {cpu} | {_not_served(proxied)} |"
                     if proxied else
                     f"| {scenario.label} | {direct['rps']:.0f} | - | - | {lat(direct)} | - | {cpu} | - |")
    if any("twitcher_ops" in results["requests"][s.key] for s in SCENARIOS):
        lines += ["", "| request | Twitcher req/s | with metrics + access log req/s | on / off | p50 / p90 / p99 ms on "
                  "| CPU ms/req on |", "|---|---:|---:|---:|---:|---:|"]
        for scenario in SCENARIOS:
            rows = results["requests"][scenario.key]
            if "twitcher_ops" in rows and "twitcher" in rows:
                ops = rows["twitcher_ops"]
                lines.append(f"| {scenario.label} | {rows['twitcher']['rps']:.0f} | {ops['rps']:.0f} | "
                             f"{rows['ops_ratio']:.2f} | {lat(ops)} | "
                             f"{ops['cpu_ms_per_request']['twitcher_ops']:.2f} |")
    dl = results["download"]
    lines += ["", "| download | direct MB/s | Twitcher MB/s | ratio | Twitcher worker peak RSS growth "
              "| Twitcher CPU ms per 100 MB | sha256 |", "|---|---:|---:|---:|---:|---:|---|"]
    if "twitcher_mb_s" in dl:
        lines.append(f"| {dl['size_mb']} MB | {dl['direct_mb_s']:.0f} | {dl['twitcher_mb_s']:.0f} | "
                     f"{dl['ratio']:.2f} | {dl['twitcher_peak_rss_growth_mb']:.1f} MB | "
                     f"{dl['twitcher_cpu_ms_per_100mb']:.0f} | {'ok' if dl['twitcher_sha256_ok'] else 'WRONG'} |")
    else:
        lines.append(f"| {dl['size_mb']} MB | {dl['direct_mb_s']:.0f} | - | - | - | - | - |")
    if "twitcher_ops_mb_s" in dl:
        lines.append(f"| {dl['size_mb']} MB, metrics + access log on | {dl['direct_mb_s']:.0f} | "
                     f"{dl['twitcher_ops_mb_s']:.0f} | {dl['twitcher_ops_mb_s'] / dl['direct_mb_s']:.2f} | "
                     f"{dl['twitcher_ops_peak_rss_growth_mb']:.1f} MB | {dl['twitcher_ops_cpu_ms_per_100mb']:.0f} | "
                     f"{'ok' if dl['twitcher_ops_sha256_ok'] else 'WRONG'} |")
    lines += nginx_markdown(results)
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
