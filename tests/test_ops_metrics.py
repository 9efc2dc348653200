"""Metrics and the access log in one process: exact counts after known traffic, bounded labels,
who may read ``/metrics``, the JSON line of each request, and nothing at all when both are off.

Through the real ``main()`` (webtest) in front of a real backend on 127.0.0.1. The multi-process
server is covered by ``tests/test_ops_runner.py``.
"""
from __future__ import annotations

import io
import json
import logging
import re
import socket
import time

import pytest
from pyramid.interfaces import ITweens

from tests.servers import serve_wsgi
from tests.test_admin_rpcinterface import rpc
from twitcher.exceptions import ConfigurationError
from twitcher.ops import accesslog
from twitcher.ops.runner import parse_listen, serve_granian
from twitcher.services import service_from_registration
from twitcher.settings import parse_settings
from twitcher.tokens import new_token

pytest.importorskip("prometheus_client")

CAPS = "?service=WPS&request=GetCapabilities"
EXECUTE = "?service=WPS&version=1.0.0&request=Execute&identifier=x"
FILE = b"0123456789" * 50_000  # 500 kB, streamed


def _backend(environ, start_response):
    path = environ["PATH_INFO"]
    if path.endswith("/fail"):
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"backend broke"]
    if path.endswith("/sleep"):
        time.sleep(1.0)
    if path.endswith("/file.bin"):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(FILE)))])
        return iter([FILE[:200_000], FILE[200_000:]])
    body = b'<?xml version="1.0"?><wps:Capabilities xmlns:wps="http://www.opengis.net/wps/1.0.0"/>'
    start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def backend_url():
    with serve_wsgi(_backend, threads=4) as url:
        yield url


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ops_app(make_app, store, backend_url, monkeypatch):
    """Twitcher with metrics and the access log on (one process), services registered."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    store.save_service(service_from_registration(backend_url + "/wps", {"name": "emu"}))
    store.save_service(service_from_registration(backend_url + "/wps", {"name": "open", "public": True}))
    store.save_service(service_from_registration(backend_url + "/wms", {"name": "maps", "type": "wms"}))
    store.save_service(service_from_registration(f"http://127.0.0.1:{_closed_port()}/wps",
                                                 {"name": "down", "public": True}))
    app = make_app(metrics="true", access_log="true", proxy_timeout="2 0.3")
    app.extra_environ = {"REMOTE_ADDR": "127.0.0.1"}
    yield app
    app.app.registry.upstream.close()


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name and ",".join(sorted(filter(None, (match.group(2) or "").split(",")))) \
                == wanted:
            return float(match.group(3))
    return 0.0


def test_metrics_count_each_decision_and_backend_error_exactly(ops_app, store):
    token, record = new_token(1)
    store.save_token(record)
    for _ in range(3):
        ops_app.get(f"/ows/proxy/emu{CAPS}", status=200)
    ops_app.get(f"/ows/proxy/emu{EXECUTE}", status=401)
    ops_app.get(f"/ows/proxy/emu{EXECUTE}", headers={"Authorization": f"Bearer {token}"}, status=200)
    ops_app.get("/ows/proxy/emu?service=WPS", status=400)  # no request: invalid
    ops_app.get(f"/ows/proxy/maps?service=WMS&request=GetSomethingElse&access_token={token}", status=200)
    ops_app.get(f"/ows/proxy/down{CAPS}", status=502)
    ops_app.get(f"/ows/proxy/open/fail{CAPS}", status=500)
    ops_app.get(f"/ows/proxy/open/sleep{CAPS}", status=504)
    download = ops_app.get(f"/ows/proxy/emu/file.bin?access_token={token}", status=200)
    assert download.body == FILE
    ops_app.get("/health", status=200)  # not under /ows: not counted

    text = ops_app.get("/metrics", status=200).text
    requests_total = "twitcher_requests_total"
    assert _sample(text, requests_total, service_type="wps", operation="getcapabilities", decision="allowed",
                   code="2xx") == 3
    assert _sample(text, requests_total, service_type="wps", operation="execute", decision="denied", code="4xx") == 1
    assert _sample(text, requests_total, service_type="wps", operation="execute", decision="allowed",
                   code="2xx") == 1
    assert _sample(text, requests_total, service_type="unknown", operation="none", decision="invalid",
                   code="4xx") == 1
    # A request name nobody listed is "other": a client cannot make up label values.
    assert _sample(text, requests_total, service_type="wms", operation="other", decision="allowed", code="2xx") == 1
    # Allowed, then the backend failed: 502 at the service root, 500 and 504 below it.
    assert _sample(text, requests_total, service_type="wps", operation="getcapabilities", decision="allowed",
                   code="5xx") == 1
    assert _sample(text, requests_total, service_type="wps", operation="path", decision="allowed", code="5xx") == 2
    assert _sample(text, requests_total, service_type="wps", operation="path", decision="allowed", code="2xx") == 1
    assert _sample(text, "twitcher_upstream_errors_total", kind="connect") == 1
    assert _sample(text, "twitcher_upstream_errors_total", kind="5xx") == 1
    assert _sample(text, "twitcher_upstream_errors_total", kind="timeout") == 1
    assert _sample(text, "twitcher_upstream_errors_total", kind="tls") == 0
    assert _sample(text, "twitcher_upstream_duration_seconds_count", service_type="wps") == 6
    assert _sample(text, "twitcher_response_bytes_total", service_type="wps") >= len(FILE)
    assert _sample(text, "twitcher_requests_in_flight") == 0
    assert _sample(text, "twitcher_tokens_issued_total") == 0  # saved beside the app, not through it
    for label in ("user", "token", "client", "job", "path", "service_name"):
        assert f'{label}="' not in text


def test_tokens_issued_and_revoked_are_counted_through_the_admin_api(ops_app):
    import xmlrpc.client

    body = rpc(ops_app, "generate_token", 1).body
    token = xmlrpc.client.loads(body)[0][0]["access_token"]
    rpc(ops_app, "generate_token", 1)
    rpc(ops_app, "revoke_token", token)
    rpc(ops_app, "revoke_token", token)  # already revoked: not counted again
    text = ops_app.get("/metrics").text
    assert _sample(text, "twitcher_tokens_issued_total") == 2
    assert _sample(text, "twitcher_tokens_revoked_total") == 1
    assert _sample(text, "twitcher_store_operation_seconds_count", operation="save_token") == 2
    assert _sample(text, "twitcher_store_operation_seconds_count", operation="revoke_token") == 2


@pytest.mark.parametrize("environ, allowed", [
    ({"REMOTE_ADDR": "127.0.0.1"}, True),
    ({"REMOTE_ADDR": "::1"}, True),
    ({"REMOTE_ADDR": "10.0.0.7"}, False),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}, False),  # relayed by a front server
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=127.0.0.1"}, False),
    ({"REMOTE_ADDR": ""}, False),
])
def test_metrics_answer_only_the_allowed_addresses(ops_app, environ, allowed):
    resp = ops_app.get("/metrics", extra_environ=environ, status=200 if allowed else 403)
    assert ("twitcher_requests_in_flight" in resp.text) is allowed


def test_metrics_allow_takes_networks(make_app, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = make_app(metrics="true", metrics_allow="10.1.0.0/16 192.0.2.1")
    app.get("/metrics", extra_environ={"REMOTE_ADDR": "10.1.200.3"}, status=200)
    app.get("/metrics", extra_environ={"REMOTE_ADDR": "192.0.2.1"}, status=200)
    app.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=403)


def test_a_bad_metrics_allow_stops_start_up_naming_the_key():
    with pytest.raises(ConfigurationError, match="twitcher.metrics_allow"):
        parse_settings({"twitcher.metrics_allow": "127.0.0.1 not-an-address", "twitcher.rpcinterface": "false"},
                       environ={})


def test_access_log_writes_one_json_line_per_request_without_the_token(ops_app, store, caplog):
    token, record = new_token(1)
    store.save_token(record)
    with caplog.at_level(logging.INFO, logger=accesslog.LOGGER_NAME):
        ops_app.get(f"/ows/proxy/emu{EXECUTE}&access_token={token}",
                    extra_environ={"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, status=200)
        ops_app.get(f"/ows/proxy/emu/{token}{EXECUTE}", status=200)  # the 0.3 form: the token in the path
        ops_app.get(f"/ows/proxy/emu{EXECUTE}", status=401)
        ops_app.get("/health")  # not under /ows: no line
        ops_app.app.registry.ops_batch.flush()  # lines are written by a thread of their own
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == accesslog.LOGGER_NAME]
    assert len(lines) == 3
    first = lines[0]
    assert set(first) == {"time", "method", "service", "service_type", "ows_service", "ows_request", "route",
                          "decision", "status", "bytes", "duration_ms", "upstream_ms", "upstream_error", "token",
                          "remote_addr", "forwarded_for"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["method"] == "GET" and first["service"] == "emu" and first["service_type"] == "wps"
    assert first["ows_service"] == "wps" and first["ows_request"] == "execute" and first["route"] is None
    assert first["decision"] == "allowed" and first["status"] == 200 and first["bytes"] > 0
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert first["token"] == record.digest[:8]
    assert first["remote_addr"] == "127.0.0.1" and first["forwarded_for"] == "203.0.113.9"
    assert lines[1]["token"] == record.digest[:8]
    assert lines[2]["decision"] == "denied" and lines[2]["status"] == 401 and lines[2]["token"] is None
    assert lines[2]["upstream_ms"] is None
    assert token not in caplog.text


def test_a_streamed_download_is_logged_when_it_ends_with_all_its_bytes(ops_app, store, caplog):
    token, record = new_token(1)
    store.save_token(record)
    with caplog.at_level(logging.INFO, logger=accesslog.LOGGER_NAME):
        assert ops_app.get(f"/ows/proxy/emu/file.bin?access_token={token}").body == FILE
        ops_app.app.registry.ops_batch.flush()
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == accesslog.LOGGER_NAME]
    assert line["bytes"] == len(FILE) and line["ows_request"] is None


def test_both_off_add_no_tween_no_route_and_no_log(make_app, caplog):
    app = make_app()
    tweens = app.app.registry.queryUtility(ITweens)
    assert not [name for name, _ in tweens.implicit() + tweens.explicit if "ops" in name]
    app.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}, status=404)
    with caplog.at_level(logging.INFO, logger=accesslog.LOGGER_NAME):
        app.get(f"/ows/proxy/nosuch{CAPS}", status=404)
    assert not [r for r in caplog.records if r.name == accesslog.LOGGER_NAME]


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("[::1]:8080", ("::1", 8080)),
    ("192.0.2.10:80", ("192.0.2.10", 80)),
])
def test_listen_is_host_and_port(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8000", "localhost:", ":8000", "host:99999", "host:http"])
def test_a_bad_listen_names_the_key(text):
    with pytest.raises(ValueError, match="listen"):
        parse_listen(text)


@pytest.mark.parametrize("options, key", [
    ({"workers": "0"}, "workers"), ({"threads": "many"}, "threads"), ({"graceful_timeout": "-1"}, "graceful_timeout"),
    ({"connections": "0"}, "connections"),
    ({"max_request_body_size": "1"}, "max_request_body_size"),
])
def test_bad_server_keys_stop_start_up_naming_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        serve_granian(None, {"__file__": "production.ini"}, **options)


def test_queued_observations_add_up_to_what_direct_ones_give():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from twitcher.ops.batch import Batch

    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", buckets=(0.01, 0.1, 1), registry=registry)
    queued = Histogram("queued_seconds", "q", buckets=(0.01, 0.1, 1), registry=registry)
    count = Counter("queued_things", "c", registry=registry)
    batch = Batch(interval=3600)  # flushed by hand below, never by its thread
    amounts = [0.0, 0.005, 0.01, 0.011, 0.1, 0.5, 1.0, 1.5, 99.0, 0.05]
    for amount in amounts:
        direct.observe(amount)
        batch.observe(queued, amount)
        batch.count(count, 2)
    assert registry.get_sample_value("queued_things_total") == 0
    batch.flush()
    buckets = [("_bucket", {"le": le}) for le in ("0.01", "0.1", "1.0", "+Inf")]
    for suffix, labels in [("_count", {}), ("_sum", {})] + buckets:
        assert registry.get_sample_value(f"queued_seconds{suffix}", labels) == pytest.approx(
            registry.get_sample_value(f"direct_seconds{suffix}", labels)), (suffix, labels)
    assert registry.get_sample_value("queued_things_total") == 20


class _CountingStream(io.StringIO):
    """A stream that counts its writes: each one is a system call on a real file or pipe."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_the_access_log_handler_writes_the_lines_of_a_batch_at_once(monkeypatch):
    from twitcher.ops.batch import Batch

    stream = _CountingStream()
    handler = accesslog.LineBatchHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    monkeypatch.setattr(accesslog.log, "handlers", [handler])
    monkeypatch.setattr(accesslog.log, "propagate", False)
    monkeypatch.setattr(accesslog.log, "level", logging.INFO)
    batch = Batch(interval=3600)  # flushed by hand below, never by its thread
    for number in range(3):
        batch.later(lambda n: accesslog.log.info('{"n":%d}', n), number)
    assert stream.getvalue() == ""
    batch.flush()  # the end of a batch writes its lines, in one write
    assert stream.getvalue() == '{"n":0}\n{"n":1}\n{"n":2}\n' and stream.writes == 1

    monkeypatch.setattr(accesslog.LineBatchHandler, "MAX_PENDING", 20)
    accesslog.log.info("a line of more than twenty characters")  # too much to keep waiting
    assert stream.getvalue().endswith("twenty characters\n") and stream.writes == 2
    accesslog.log.info("waiting")
    logging.shutdown([lambda: handler])  # at exit every handler is flushed: nothing waits for ever
    assert stream.getvalue().endswith("waiting\n") and stream.writes == 3
