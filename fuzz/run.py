"""Run every fuzz target for a while, one after the other (``make fuzz``); exit 1 on a finding.

Each target runs in its own process (atheris exits on the first finding) with two corpus
directories: a working one under ``fuzz/out/`` that the fuzzer grows, and the seeds in
``fuzz/corpus/<target>/``, which it only reads, so the repository keeps small seeds. A finding
is written to ``fuzz/out/<target>/crash-...`` and named in the summary; reproduce it with
``python -m fuzz.<target> fuzz/out/<target>/crash-...``. ``fuzz/out/`` is not in git.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("kvp", "xmlrequest", "urlmap", "rewrite", "headers")
#: Largest input per target: documents get room to hold a real capabilities document.
MAX_LEN = {"rewrite": 16384, "xmlrequest": 8192}
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.MULTILINE)
_FINDING = re.compile(r"^(?:==\d+== ERROR: libFuzzer: .*|=== Uncaught Python exception: ===)$", re.MULTILINE)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fuzz_target(target: str, seconds: int, out: Path) -> dict:
    """Fuzz one target for ``seconds``; its statistics, and the files of what it found."""
    work, seeds = out / target / "corpus", ROOT / "fuzz" / "corpus" / target
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{target}.log"
    command = [sys.executable, "-m", f"fuzz.{target}", str(work), str(seeds),
               f"-max_total_time={seconds}", f"-artifact_prefix={out / target}/",
               f"-max_len={MAX_LEN.get(target, 4096)}", "-timeout=10", "-rss_limit_mb=2048",
               "-print_final_stats=1", f"-dict={ROOT / 'fuzz' / 'ows.dict'}"]
    started = time.monotonic()
    with log_path.open("w") as log:
        # A grace beyond the run time for start-up and the final statistics, then it is stopped.
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=seconds + 120).returncode
        except subprocess.TimeoutExpired:
            code = -1
    text = log_path.read_text(errors="replace")
    stats = {key: int(value) for key, value in _STAT.findall(text)}
    findings = sorted(_shown(p) for p in (out / target).glob("*-*") if p.is_file())
    return {
        "target": target, "code": code, "seconds": round(time.monotonic() - started),
        "executions": stats.get("number_of_executed_units", 0),
        "per_second": stats.get("average_exec_per_sec", 0),
        "corpus": sum(1 for _ in work.iterdir()), "findings": findings,
        "finding_text": _FINDING.search(text) is not None, "log": _shown(log_path),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="fuzzing time per target (default 600)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz" / "out", help="working corpus, logs, findings")
    args = parser.parse_args(argv)
    targets: List[str] = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    results = []
    for target in targets:
        print(f"fuzzing {target} for {args.seconds} s ...", flush=True)
        result = fuzz_target(target, args.seconds, args.out)
        results.append(result)
        print(f"  {result['executions']} executions ({result['per_second']}/s), corpus {result['corpus']}, "
              f"exit {result['code']}, findings: {', '.join(result['findings']) or 'none'}", flush=True)
    print(f"\n{'target':<12}{'seconds':>8}{'executions':>12}{'exec/s':>8}  findings")
    failed = False
    for r in results:
        bad = r["code"] != 0 or r["findings"] or r["finding_text"]
        failed = failed or bool(bad)
        print(f"{r['target']:<12}{r['seconds']:>8}{r['executions']:>12}{r['per_second']:>8}  "
              f"{len(r['findings']) if not bad else 'FAILED, see ' + r['log']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
