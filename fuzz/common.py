"""What the harnesses share: the services they fuzz against, input splitting, and the atheris entry.

A harness is a module with ``check(data: bytes) -> None`` that raises on a finding: any exception
other than an :class:`~twitcher.exceptions.OWSException` (the documented answers to bad input), or
an ``AssertionError`` when an invariant breaks. ``check`` needs no atheris, so that
``tests/test_fuzz_corpus.py`` can run every seed through it in ``make test``.

Inputs are plain bytes split on newlines, so that seed files stay readable and a crash file can be
read by eye. The first byte of most inputs picks one of :data:`SERVICES` (``0`` the first, ``1``
the second, ...) rather than fuzzing the registered URL: those are validated at registration, and
fuzzing them would mostly explore URLs that cannot be registered.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, List, Optional, Sequence, Tuple

#: (registered service URL, public proxy URL) pairs: ports, query strings, IPv6, trailing slashes,
#: a deep directory, a ``purl`` on another host and a non-ASCII proxy path.
SERVICES: Tuple[Tuple[str, str], ...] = (
    ("http://backend.example:8080/wps", "https://twitcher.example.org/ows/proxy/emu"),
    ("http://backend.example:8080/cgi-bin/mapserv?map=/maps/world.map", "https://tw.example/ows/proxy/maps"),
    ("https://Backend.Example:443/geoserver/wfs", "http://127.0.0.1:8000/ows/proxy/wfs"),
    ("http://[::1]:8080/geoserver/ows", "https://tw/ows/proxy/geo"),
    ("http://backend.example/geoserver/ows", "https://tw/ows/proxy/gs"),
    ("https://backend.example/wps?service=WPS&version=1.0.0", "https://purl.example/public/wps"),
    ("http://backend.example:8080/services/hydro/wps", "https://tw/ows/proxy/d\u00e9j\u00e0 vu"),
    ("http://backend.example:80/", "https://tw/ows/proxy/root"),
    ("http://backend.example:8080/api/", "https://tw/ows/proxy/api"),
)


def pick_service(data: bytes) -> Tuple[str, str, bytes]:
    """The service chosen by the first byte of ``data``, and the rest of ``data``."""
    if not data:
        return SERVICES[0][0], SERVICES[0][1], b""
    service_url, proxy_url = SERVICES[(data[0] - ord("0")) % len(SERVICES)]
    return service_url, proxy_url, data[1:]


def fields(data: bytes, count: int) -> List[bytes]:
    """``data`` split on the first ``count - 1`` newlines, padded with empty fields."""
    parts = data.split(b"\n", count - 1)
    return parts + [b""] * (count - len(parts))


def run(check: Callable[[bytes], None], argv: Optional[Sequence[str]] = None) -> None:
    """Fuzz ``check`` with atheris; ``argv`` takes libFuzzer's options and corpus directories.

    Everything loaded so far is instrumented (Twitcher, and the parts of the standard library it
    leans on, such as ``urllib.parse``), so the fuzzer is guided by coverage of both.
    """
    import atheris  # only here: the seed-corpus test runs ``check`` without atheris installed

    # The code under test logs what it passes on unchanged; millions of such lines would only
    # slow the fuzzer down and fill its log.
    logging.disable(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup(list(argv if argv is not None else sys.argv), check)
    atheris.Fuzz()
