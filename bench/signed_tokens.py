"""Micro-benchmark: CPU time to verify a signed (Biscuit) token, against the 0.3 ms budget.

Runs alone (``python bench/signed_tokens.py``), needs no server and no network: it mints tokens
with a fresh key and verifies them the way the OWS security tween does (``check_access`` with
fresh revocation lists in memory, a SQLite store that must not be asked). CPU time is thread
time, measured in batches; the median batch gives the per-call cost, the slowest batch shows
the noise. The budget is judged on a token seen for the first time (signatures checked); a
token sent again costs less, since its verified signatures are remembered. Exit status 1 when
the median of the full first-time check of a one-block token is over the budget.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/signed_tokens.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from twitcher.federation import biscuit  # noqa: E402
from twitcher.federation.access import Federation, check_access  # noqa: E402
from twitcher.federation.revocation import RevocationLists  # noqa: E402
from twitcher.store import open_store  # noqa: E402
from twitcher.tokens import new_token, utcnow  # noqa: E402

#: The budget of issue 15: verifying a signed token costs at most this much CPU.
BUDGET_MS = 0.3


def measure(call: Callable[[], object], batches: int, batch_size: int) -> Dict[str, float]:
    """Per-call CPU milliseconds: median and slowest of ``batches`` batches (after a warm-up batch)."""
    for _ in range(batch_size):
        call()
    per_call = []
    for _ in range(batches):
        start = time.thread_time()
        for _ in range(batch_size):
            call()
        per_call.append((time.thread_time() - start) * 1000 / batch_size)
    return {"median_ms": statistics.median(per_call), "max_ms": max(per_call)}


class _NoStore:
    """Stands in for the store on the signed path: any query is a failure of the benchmark."""

    def __getattr__(self, name):
        raise AssertionError(f"the store was asked ({name}) on the signed-token path")


def cases(folder: str) -> Dict[str, Callable[[], object]]:
    key = biscuit.load_signing_key(biscuit.generate_private_key_pem())
    # cache_size=0: every call checks the signatures, as for a token seen for the first time.
    keys = biscuit.TrustedKeys({key.public_key: "site-a"}, cache_size=0)
    expires = utcnow() + timedelta(hours=1)
    token = biscuit.mint(key, "site-a", expires, subject="alice", services=["emu"], operations=["execute"],
                         environ={"DATA_TOKEN": "x" * 40, "DATA_USER": "alice"})
    child = biscuit.attenuate(token, services=["emu"], operations=["execute"], expires_at=expires)
    grandchild = biscuit.attenuate(child, operations=["execute"])

    store = open_store(f"sqlite:///{folder}/bench.sqlite")
    lists = RevocationLists("site-a", {}, store, poll_seconds=3600, max_age_seconds=7200)
    lists.refresh_all()
    lists.ensure_polling = lambda: None  # no poller thread in a benchmark
    federation = Federation("site-a", key, keys, lists)
    registry = SimpleNamespace(federation=federation, store=_NoStore())
    cached = SimpleNamespace(federation=Federation("site-a", key, biscuit.TrustedKeys({key.public_key: "site-a"}),
                                                   lists), store=_NoStore())

    opaque, record = new_token(1)
    store.save_token(record)
    opaque_registry = SimpleNamespace(federation=federation, store=store)

    def never(issuer, ids):
        return None

    return {
        "library verify, 1 block": lambda: biscuit.verify(token, keys, "emu", "execute", never),
        "library verify, 2 blocks": lambda: biscuit.verify(child, keys, "emu", "execute", never),
        "library verify, 3 blocks": lambda: biscuit.verify(grandchild, keys, "emu", "execute", never),
        "check_access signed, 1 block": lambda: check_access(registry, token, "emu", "execute"),
        "check_access signed, 3 blocks": lambda: check_access(registry, grandchild, "emu", "execute"),
        "  same, signature remembered, 1 block": lambda: check_access(cached, token, "emu", "execute"),
        "  same, signature remembered, 3 blocks": lambda: check_access(cached, grandchild, "emu", "execute"),
        "check_access opaque (SQLite)": lambda: check_access(opaque_registry, opaque, "emu", "execute"),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=21, help="measured batches per case (default 21)")
    parser.add_argument("--batch-size", type=int, default=200, help="calls per batch (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = {name: measure(call, args.batches, args.batch_size) for name, call in cases(folder).items()}
    full = results["check_access signed, 1 block"]["median_ms"]
    if args.json:
        print(json.dumps({"budget_ms": BUDGET_MS, "results": results}, indent=2))
    else:
        print(f"{'case':40} {'median ms':>10} {'slowest ms':>11}")
        for name, result in results.items():
            print(f"{name:40} {result['median_ms']:10.3f} {result['max_ms']:11.3f}")
        verdict = "within" if full <= BUDGET_MS else "OVER"
        print(f"signed check {full:.3f} ms CPU: {verdict} the budget of {BUDGET_MS} ms")
    return 0 if full <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
