"""py-spy profiles of the Twitcher workers under load, one request type at a time."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench.load import run_wrk
from bench.scenarios import SCENARIOS, Targets, request_for


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
