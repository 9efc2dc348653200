"""The HTTP exchange with a backend, on libcurl (pycurl): send a request, stream the answer.

Why libcurl. The upstream exchange is most of what a proxied request costs. In Python
(``http.client`` and urllib3, which parse headers with the ``email`` package) it took about
0.35 ms of CPU per small request; libcurl does the same in C for about 0.07 ms and holds no GIL
while it waits. ``make bench`` and ``docs/benchmark.rst`` have the numbers.

How. Each thread keeps one libcurl multi handle (its connection cache: keep-alive connections
per backend), one easy handle and a ``poll`` object, created on the thread's first exchange and
again in a forked child. The exchange is driven from the calling thread with the multi *socket*
interface (libcurl says which sockets to watch; ``poll`` has no ``FD_SETSIZE`` limit), so an
answer can be read a piece at a time: the headers first, then as much of the body as the caller
asks for. A streaming answer pauses libcurl once :data:`STREAM_BUFFER` bytes wait unread, so
memory does not grow with the size of a download however slow the client.

What a backend gets is exactly what the caller chose: libcurl's own defaults (``Accept: */*``,
``Expect: 100-continue``, a form ``Content-Type`` on POST, environment proxies, dot-segment
removal in the path, protocols other than HTTP(S), HTTP/2) are all switched off.

Failures are :class:`UpstreamError` subclasses; :mod:`twitcher.proxy.view` turns them into OWS
exceptions (502, 504, 413).
"""
from __future__ import annotations

import os
import select
import ssl
import threading
import time
import weakref
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pycurl

#: libcurl's receive buffer per thread (16 KiB to 1 MiB measured alike: docs/benchmark.rst).
RECEIVE_BUFFER = 64 * 1024
#: Bytes of a streamed answer joined into one chunk for the WSGI server when they are ready.
CHUNK_TARGET = 256 * 1024
#: Unread bytes of a streamed answer at which libcurl is paused until the caller catches up.
STREAM_BUFFER = 1024 * 1024
#: Idle keep-alive connections a thread keeps (over all backends).
MAX_CACHED_CONNECTIONS = 8
#: How long one ``poll`` waits at most: libcurl's timers are usually much shorter.
MAX_POLL_MS = 1000

_POLL_EVENTS = {
    pycurl.POLL_IN: select.POLLIN,
    pycurl.POLL_OUT: select.POLLOUT,
    pycurl.POLL_INOUT: select.POLLIN | select.POLLOUT,
}
# libcurl errors of a connection that never got going, and of a timeout it noticed itself.
_UNREACHABLE = frozenset({
    pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_SSL_CONNECT_ERROR,
    pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE,
})
_TIMED_OUT = frozenset({pycurl.E_OPERATION_TIMEDOUT})
# Headers libcurl would add by itself unless the request names them: an empty value drops them.
# (pycurl sets a User-Agent of its own on every handle.)
_CURL_DEFAULT_HEADERS = ("accept", "expect", "content-type", "user-agent")

Body = Union[bytes, Iterable[bytes], None]


class UpstreamError(Exception):
    """The exchange with the backend failed; ``detail`` is libcurl's word for it (for the log)."""

    def __init__(self, detail: str, cause: Optional[BaseException] = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: An exception raised by the request body while it was being sent (e.g. too large).
        self.cause = cause


class UpstreamUnreachable(UpstreamError):
    """No connection to the backend, or it broke before a complete answer header arrived."""


class UpstreamTimeout(UpstreamError):
    """The backend did not connect or send anything for longer than the timeout."""


class UpstreamBroken(UpstreamError):
    """The answer broke off after its headers: the body is incomplete."""


def _ca_options(verify: Union[bool, str]) -> List[Tuple[int, object]]:
    """libcurl TLS options for a service's ``verify``: the trust store Python would use for True,
    the given file or directory of CA certificates, or no verification for False.

    A value of None unsets the option: the wheel's libcurl has a CA file of its own compiled in,
    which must not be trusted beside a CA directory a service names.
    """
    if verify is False:
        return [(pycurl.SSL_VERIFYPEER, 0), (pycurl.SSL_VERIFYHOST, 0)]
    options: List[Tuple[int, object]] = [(pycurl.SSL_VERIFYPEER, 1), (pycurl.SSL_VERIFYHOST, 2)]
    if verify is True:
        # Use the system's trust store as Python's ssl module (and SSL_CERT_FILE / SSL_CERT_DIR)
        # finds it, not where the wheel's libcurl was told it would be.
        paths = ssl.get_default_verify_paths()
        cafile = paths.cafile if paths.cafile and os.path.isfile(paths.cafile) else None
        capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
        if cafile or capath:
            options += [(pycurl.CAINFO, cafile), (pycurl.CAPATH, capath)]
    elif os.path.isdir(verify):
        options += [(pycurl.CAINFO, None), (pycurl.CAPATH, verify)]
    else:
        options += [(pycurl.CAINFO, verify), (pycurl.CAPATH, None)]
    return options


def header_lines(headers: Sequence[Tuple[str, str]]) -> List[str]:
    """``Name: value`` lines for libcurl, plus empty ones that stop it adding its own defaults.

    An empty value is written ``Name;`` (libcurl reads ``Name:`` as "remove"); a header with a line
    break in it is dropped, so that nothing can smuggle a header of its own into the request.
    """
    lines, present = [], set()
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            continue
        present.add(name.lower())
        lines.append(f"{name}: {value}" if value else f"{name};")
    lines += [f"{name.title()}:" for name in _CURL_DEFAULT_HEADERS if name not in present]
    return lines


class _ThreadState:
    """One thread's libcurl handles, ``poll`` object and libcurl's timer deadline."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, MAX_CACHED_CONNECTIONS)
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._timer)
        self.easy = pycurl.Curl()
        self.poller = select.poll()
        self.timer_deadline: Optional[float] = None
        self.active: Optional[Exchange] = None

    def _watch(self, what: int, fd: int, multi, data) -> None:
        if what == pycurl.POLL_REMOVE:
            self.forget(fd)
        else:
            self.poller.register(fd, _POLL_EVENTS[what])

    def forget(self, fd: int) -> None:
        try:
            self.poller.unregister(fd)
        except KeyError:
            pass

    def _timer(self, timeout_ms: int) -> None:
        self.timer_deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

    def close(self) -> None:
        if self.active is not None:
            self.active.close()
        self.easy.close()
        self.multi.close()


class Upstream:
    """The backend exchanges of one Twitcher: a libcurl handle set per thread.

    Kept in the registry as ``registry.upstream``; :meth:`close` lets go of every cached
    connection (tests call it so that their backends stop at once). A thread's handles live as
    long as the thread: the registry of them is weak, so a server that starts a thread per
    connection does not pile up handles and open backend connections.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._states: weakref.WeakSet[_ThreadState] = weakref.WeakSet()

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None or state.pid != os.getpid():
            # In a forked child the parent's handles share its sockets: leave them alone (never
            # close them from here) and start afresh.
            state = self._local.state = _ThreadState()
            with self._lock:
                self._states.add(state)
        return state

    def exchange(self, method: str, url: str, headers: Sequence[Tuple[str, str]], body: Body,
                 verify: Union[bool, str], timeout: Tuple[float, float], slot: Optional[Slot] = None) -> Exchange:
        """Send a request and wait for the answer's status and headers (the body is not read yet).

        ``body`` is bytes, an iterable of bytes (sent chunked, or with the length ``len(body)``
        when it has one), or None. ``timeout`` is (connect, read) seconds; the read timeout is the
        longest silence allowed while the backend is sent the request or sends its answer, and
        also the longest wait in all for the answer's headers once the request is sent. ``slot``
        is released when the exchange ends (:meth:`Exchange.close`), however it ends.
        """
        state = self._state()
        if state.active is not None:  # an answer nobody closed: its connection is not reusable
            state.active.close()
        return Exchange(state, method, url, headers, body, verify, timeout, slot)

    def close(self) -> None:
        with self._lock:
            states, self._states = list(self._states), weakref.WeakSet()
        pid = os.getpid()
        for state in states:
            if state.pid == pid:
                state.close()
        self._local = threading.local()


class Slot:
    """One place among a service's concurrent exchanges; :meth:`release` gives it back (once)."""

    __slots__ = ("_slots", "_name", "_held")

    def __init__(self, slots: ServiceSlots, name: str) -> None:
        self._slots = slots
        self._name = name
        self._held = True

    def release(self) -> None:
        """Give the place back; calling it again does nothing, so every exit path may call it."""
        if self._held:
            self._held = False
            self._slots._release(self._name)


#: How long a request waits for a slot of its service before it is refused with 503.
SLOT_WAIT_SECONDS = 0.25
#: At most one log line per service in this time about the requests its bound refused.
REFUSAL_LOG_SECONDS = 10.0


class ServiceSlots:
    """A bound on the exchanges in flight per service in this process.

    A backend that answers slowly or never would otherwise hold one worker thread per request
    sent to it until the timeouts end it, and a handful of requests would stall every route of
    Twitcher, ``/health`` and ``/RPC2`` included. With the bound below the server's thread count,
    a stuck service keeps at most ``limit`` threads; a request beyond it waits ``wait`` seconds
    for a slot, then is refused (:meth:`acquire` returns None) instead of queueing behind it.

    The short wait is for healthy backends: their exchanges end within milliseconds, so a burst
    of more requests than slots is served a moment later. Refused at once, a third of the
    requests of 16 clients were answered ``503`` by a Twitcher with 4 slots and a fast backend
    (``make bench``, 2026-12-06).

    Each service has a condition of its own (all on one lock), and a release wakes one waiter of
    its service, not every waiter of every service only for all but one to sleep again. (Measured
    side by side with ``python -m bench.compare``, the rates were the same within the noise: the
    waits are short and few.)
    """

    def __init__(self, limit: int, wait: float = SLOT_WAIT_SECONDS) -> None:
        self.limit = limit
        self.wait = wait
        self._lock = threading.Lock()
        self._in_flight: dict = {}
        self._freed: dict = {}  # name -> Condition on self._lock, made at the first wait
        self._refused: dict = {}  # name -> [refusals not yet reported, when last reported]

    def acquire(self, name: str) -> Optional[Slot]:
        """A slot for one exchange with service ``name``, or None when none came free in time."""
        with self._lock:
            if self._in_flight.get(name, 0) >= self.limit:
                freed = self._freed.get(name)
                if freed is None:
                    freed = self._freed[name] = threading.Condition(self._lock)
                deadline = time.monotonic() + self.wait
                # The count is checked before the time: a waiter woken by a release just as its
                # wait ran out takes the slot, so that no release is lost on it.
                while self._in_flight.get(name, 0) >= self.limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._refused.setdefault(name, [0, float("-inf")])[0] += 1
                        return None
                    freed.wait(remaining)
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
        return Slot(self, name)

    def refusals_to_report(self, name: str) -> int:
        """Refusals of service ``name`` not reported yet, once per ``REFUSAL_LOG_SECONDS`` (else 0):
        a hung backend refuses every request sent to it, and one log line each would flood the log."""
        with self._lock:
            entry = self._refused.get(name)
            now = time.monotonic()
            if entry is None or not entry[0] or now - entry[1] < REFUSAL_LOG_SECONDS:
                return 0
            count, entry[0], entry[1] = entry[0], 0, now
            return count

    def in_flight(self, name: str) -> int:
        """How many exchanges with service ``name`` hold a slot now (for tests and metrics)."""
        with self._lock:
            return self._in_flight.get(name, 0)

    def _release(self, name: str) -> None:
        with self._lock:
            count = self._in_flight.get(name, 0) - 1
            if count > 0:
                self._in_flight[name] = count
            else:
                self._in_flight.pop(name, None)
            freed = self._freed.get(name)
            if freed is not None:
                freed.notify()


class _BodyReader:
    """libcurl's READFUNCTION over an iterable of chunks; remembers what went wrong, if anything."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.rest = b""
        self.error: Optional[BaseException] = None
        self.finished = False

    def __call__(self, size: int) -> Union[bytes, int]:
        try:
            while not self.rest:
                self.rest = next(self.chunks)
        except StopIteration:
            self.finished = True
            return b""
        except Exception as exc:  # e.g. RequestTooLarge: end the transfer, report it afterwards
            self.error = exc
            return pycurl.READFUNC_ABORT
        piece, self.rest = self.rest[:size], self.rest[size:]
        return piece


class Exchange:
    """One request to a backend and its answer: ``status``, ``reason``, ``headers``, then the body
    through :meth:`chunks`. :meth:`close` must be called: it gives a fully
    read connection back to the thread's cache and drops any other."""

    def __init__(self, state: _ThreadState, method: str, url: str, headers: Sequence[Tuple[str, str]], body: Body,
                 verify: Union[bool, str], timeout: Tuple[float, float], slot: Optional[Slot] = None) -> None:
        #: The service slot this exchange holds, given back by :meth:`close`.
        self.slot = slot
        self._state = state
        self._easy = state.easy
        self._read_timeout = timeout[1]
        self.status = 0
        self.reason = ""
        #: The answer's headers in the order received, names and values as sent (latin-1).
        self.headers: List[Tuple[str, str]] = []
        self._headers_done = False
        self._pending: List[bytes] = []
        self._pending_bytes = 0
        self._streaming = False
        self._paused = False
        self._done = False
        self._error: Optional[Tuple[int, str]] = None
        self._body_reader: Optional[_BodyReader] = None
        self._added = False
        #: A total deadline (``time.monotonic()``) for the transfer, whatever the backend sends
        #: meanwhile; None for none. Set it around a read that must end in time (a document read
        #: for rewriting), clear it before streaming.
        self.deadline: Optional[float] = None

        self._configure(method, url, headers, body, verify, timeout)

        state.active = self
        state.multi.add_handle(self._easy)
        self._added = True
        try:
            # A backend may answer before it has the whole body; the exchange is only good once
            # the body went out whole (or the backend ended it), so that a body that turns out too
            # large is always refused. Meanwhile the answer is buffered like a stream: bounded.
            reader = self._body_reader
            self._streaming = True
            if reader is not None:  # the client's body may come slowly: only silence counts here
                self._pump(lambda: reader.finished or reader.error is not None or self._headers_done)
            # Then the read timeout bounds the whole wait for the answer's headers, not only a
            # silence: a backend trickling a byte at a time must not hold a worker for ever.
            self.deadline = time.monotonic() + self._read_timeout
            self._pump(lambda: self._headers_done and (reader is None or reader.finished or reader.error))
            self.deadline = None
            self._streaming = False
            if reader is not None and reader.error is not None:
                raise UpstreamUnreachable("the request body could not be sent", reader.error)
            if not self._headers_done:
                self._raise_failure(before_headers=True)
        except BaseException:
            self.close()
            raise

    def _configure(self, method: str, url: str, headers: Sequence[Tuple[str, str]], body: Body,
                   verify: Union[bool, str], timeout: Tuple[float, float]) -> None:
        """Set the thread's easy handle up for this request, every option from scratch."""
        easy = self._easy
        easy.reset()
        easy.setopt(pycurl.URL, url)
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.PROXY, "")  # never an http_proxy from the environment
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.PATH_AS_IS, 1)  # the path target_url built, not a normalised one
        easy.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        easy.setopt(pycurl.BUFFERSIZE, RECEIVE_BUFFER)
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(timeout[0] * 1000)))
        easy.setopt(pycurl.HTTPHEADER, header_lines(headers))
        easy.setopt(pycurl.HEADERFUNCTION, self._on_header)
        easy.setopt(pycurl.WRITEFUNCTION, self._on_data)
        if url.startswith("https:"):
            for option, value in _ca_options(verify):
                if value is None:
                    easy.unsetopt(option)
                else:
                    easy.setopt(option, value)
        if method == "HEAD":
            easy.setopt(pycurl.NOBODY, 1)
        elif method == "POST" or body and method != "GET":
            easy.setopt(pycurl.POST, 1)
            if method != "POST":  # PUT, PATCH, DELETE with a body (OGC API): sent as a POST's is
                easy.setopt(pycurl.CUSTOMREQUEST, method)
            if isinstance(body, (bytes, bytearray)):
                easy.setopt(pycurl.POSTFIELDSIZE_LARGE, len(body))
                easy.setopt(pycurl.POSTFIELDS, bytes(body))
            elif body is not None:
                self._body_reader = _BodyReader(body)
                easy.setopt(pycurl.READFUNCTION, self._body_reader)
                length = len(body) if hasattr(body, "__len__") else -1  # -1: chunked
                easy.setopt(pycurl.POSTFIELDSIZE_LARGE, length)
            else:
                easy.setopt(pycurl.POSTFIELDSIZE_LARGE, 0)
                easy.setopt(pycurl.POSTFIELDS, b"")
        elif method != "GET":
            easy.setopt(pycurl.CUSTOMREQUEST, method)

    # -- libcurl callbacks ---------------------------------------------------------------------

    def _on_header(self, line: bytes) -> None:
        if self._headers_done:
            return  # trailers of a chunked answer: not forwarded
        if line.startswith(b"HTTP/"):
            # A status line; a 1xx answer before the final one starts the headers anew.
            _, _, rest = line.decode("latin-1").strip().partition(" ")
            code, _, self.reason = rest.partition(" ")
            self.status = int(code) if code.isdigit() else 0
            self.headers = []
        elif line in (b"\r\n", b"\n"):
            self._headers_done = self.status >= 200
        elif line[:1] in (b" ", b"\t") and self.headers:  # obsolete line folding
            name, value = self.headers[-1]
            self.headers[-1] = (name, f"{value} {line.decode('latin-1').strip()}")
        else:
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                self.headers.append((name.strip(), value.strip()))

    def _on_data(self, data: bytes) -> Optional[int]:
        if self._streaming and self._pending_bytes >= STREAM_BUFFER:
            self._paused = True
            return pycurl.WRITEFUNC_PAUSE  # libcurl keeps this piece and offers it again on unpause
        self._pending.append(data)
        self._pending_bytes += len(data)
        return None

    # -- driving the transfer ------------------------------------------------------------------

    def _pump(self, enough: Callable[[], bool], block: bool = True) -> None:
        """Let libcurl work until ``enough()`` or the end of the transfer.

        Blocking, a silence longer than the read timeout, or passing :attr:`deadline`, raises
        :class:`UpstreamTimeout`; not blocking, it stops as soon as no socket is ready.
        """
        state = self._state
        deadline = time.monotonic() + self._read_timeout
        total = self.deadline
        if self._paused:
            self._paused = False
            self._easy.pause(pycurl.PAUSE_CONT)  # may deliver data at once
            self._collect()
        while not enough() and not self._done:
            now = time.monotonic()
            if now >= deadline:
                raise UpstreamTimeout("no answer within the read timeout")
            if total is not None and now >= total:
                raise UpstreamTimeout("the answer did not arrive within its deadline")
            wait = deadline - now if total is None else min(deadline, total) - now
            if state.timer_deadline is not None:
                wait = min(wait, max(0.0, state.timer_deadline - now))
            events = state.poller.poll(min(wait * 1000, MAX_POLL_MS) if block else 0)
            self._act(events)
            self._collect()
            if events:  # the backend sent or took something: the silence starts anew
                deadline = time.monotonic() + self._read_timeout
            elif not block:
                return

    def _act(self, events: List[Tuple[int, int]]) -> None:
        """Tell libcurl which of its sockets are ready, and when its timer has run out."""
        state = self._state
        for fd, event in events:
            if event & select.POLLNVAL:  # closed without libcurl telling us: nothing to do
                state.forget(fd)
                continue
            flags = 0
            if event & (select.POLLIN | select.POLLHUP):
                flags |= pycurl.CSELECT_IN
            if event & select.POLLOUT:
                flags |= pycurl.CSELECT_OUT
            if event & select.POLLERR:
                flags |= pycurl.CSELECT_ERR
            state.multi.socket_action(fd, flags)
        if state.timer_deadline is not None and time.monotonic() >= state.timer_deadline:
            state.timer_deadline = None
            state.multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _collect(self) -> None:
        """Note the end of the transfer, and its error if any, once libcurl reports it."""
        while True:
            queued, finished, failed = self._state.multi.info_read()
            for _handle, errno, message in failed:
                self._error = (errno, message)
                self._done = True
            if finished:
                self._done = True
            if not queued:
                return

    def _raise_failure(self, before_headers: bool) -> None:
        errno, message = self._error or (0, "the answer ended early")
        reader = self._body_reader
        cause = reader.error if reader is not None else None
        if errno in _TIMED_OUT:
            raise UpstreamTimeout(message)
        if before_headers or errno in _UNREACHABLE:
            raise UpstreamUnreachable(message, cause)
        raise UpstreamBroken(message)

    # -- the body ------------------------------------------------------------------------------

    def _take(self) -> List[bytes]:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        return pieces

    def chunks(self) -> Iterator[bytes]:
        """The rest of the body: whatever has arrived when asked, up to :data:`CHUNK_TARGET` bytes.

        libcurl hands data over in pieces of about 16 KiB; joining what is ready into larger
        chunks spares the WSGI server most of its writes, and never waits for more data.
        Raises :class:`UpstreamBroken` or :class:`UpstreamTimeout` when the answer breaks off.
        """
        self._streaming = True
        while True:
            self._pump(lambda: self._pending_bytes > 0)
            self._pump(lambda: self._pending_bytes >= CHUNK_TARGET, block=False)
            if self._pending:
                pieces = self._take()
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            elif self._done:
                if self._error is not None:
                    self._raise_failure(before_headers=False)
                return

    def close(self) -> None:
        """Leave the transfer: a finished one's connection stays cached, an unfinished one is dropped."""
        if self._added:
            self._added = False
            self._state.multi.remove_handle(self._easy)
            if self._state.active is self:
                self._state.active = None
        self._pending, self._pending_bytes = [], 0
        if self.slot is not None:
            self.slot.release()
