"""Load generators: open loop (a trace, or a fixed rate) and closed loop (N busy clients).

Open loop means each request is sent at its scheduled time whether or not earlier ones have
answered, and its latency is measured *from the scheduled time*: a slow system cannot slow
the arrivals down and hide its own queueing (no coordinated omission). That is what wrk
cannot do (each connection waits for its answer before sending again), and wrk2 is not
packaged in Debian, so this module carries its own.

The client is a minimal HTTP/1.1 keep-alive client on ``asyncio.Protocol`` (a request costs
tens of microseconds, several times less than aiohttp's client), so one Python process can
offer a few thousand requests per second on a 2-core machine. It understands exactly what
Envoy and the simulated replica send back: a status line, headers, a Content-Length body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bench.lib.util import MODEL, say

CONNECT_ERROR = -1
TIMEOUT = -2


@dataclass(slots=True)
class Outcome:
    """One request: offsets are seconds since the run started, on the loop's clock."""

    index: int
    scheduled: float
    sent: float
    done: float
    status: int  # HTTP status, or CONNECT_ERROR / TIMEOUT

    @property
    def latency(self) -> float:
        return self.done - self.scheduled

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._head = -1  # end of headers in _buf, once seen
        self._length = 0
        self._status = 0
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._head < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head = end + 4
            lines = bytes(self._buf[:end]).split(b"\r\n")
            self._status = int(lines[0].split(b" ", 2)[1])
            self._length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.reusable = False
                elif name == b"transfer-encoding":
                    self.reusable = False  # not expected from our servers: do not parse it
        if len(self._buf) >= self._head + self._length:
            del self._buf[: self._head + self._length]
            self._head = -1
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(self._status)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Client:
    """A pool of keep-alive connections to one ``host:port``; grows on demand up to
    ``max_connections`` (a request beyond that fails as CONNECT_ERROR)."""

    def __init__(self, host: str, port: int, max_connections: int = 8192) -> None:
        self.host, self.port, self.max_connections = host, port, max_connections
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()  # so close() also ends connections mid-request
        self._open = 0

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            self._all.discard(conn)
            self._open -= 1
        if self._open >= self.max_connections:
            raise ConnectionError(f"more than {self.max_connections} connections")
        self._open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port
            )
        except OSError:
            self._open -= 1
            raise
        self._all.add(conn)
        return conn

    async def request(self, data: bytes, timeout: float) -> int:
        """Send one request (raw bytes); its status, CONNECT_ERROR or TIMEOUT."""
        try:
            conn = await self._connection()
        except OSError:
            return CONNECT_ERROR
        try:
            status = await asyncio.wait_for(conn.send(data), timeout)
        except TimeoutError:
            status = TIMEOUT
            conn.close()
        except ConnectionError:
            status = CONNECT_ERROR
            conn.close()
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()
            self._all.discard(conn)
            self._open -= 1
        return status

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._open = 0


def http_request(
    host: str, service_ms: float | None = None, path: str = "/v1/completions"
) -> bytes:
    """A small POST as a client of an inference API sends it."""
    extra = f"x-sim-service-ms: {service_ms:.3f}\r\n" if service_ms is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nx-model: {MODEL}\r\n{extra}"
        "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    ).encode()


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No garbage collection while load is being sent: a full collection of this process
    (protobuf modules make it large) pauses the sender for ~20 ms, which open-loop timing
    would charge to the system under test. Collected once afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()


class Progress:
    """Prints ``label: sent/total, done, errors`` every ``every`` seconds while a run lasts."""

    def __init__(self, label: str, total: int, every: float = 3.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.sent = self.done = self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def count(self, status: int) -> None:
        self.done += 1
        if not 200 <= status < 300:
            self.errors += 1

    def line(self) -> str:
        done = f"done {self.done}, errors {self.errors}"
        return f"{self.label}: sent {self.sent}/{self.total}, {done}"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            say("  " + self.line())

    def __enter__(self) -> Progress:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def open_loop(
    client: Client,
    offsets: Sequence[float],
    payload: Callable[[int], bytes],
    *,
    timeout: float,
    deadline: float,
    progress: Progress,
) -> list[Outcome]:
    """Send request ``i`` (bytes ``payload(i)``) at ``offsets[i]`` seconds from now; wait for
    all answers. Requests still unanswered ``deadline`` seconds after the start count as
    TIMEOUT; nothing is sent after the deadline either."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.02
    out: list[Outcome | None] = [None] * len(offsets)

    async def one(i: int, at: float) -> None:
        sent = loop.time()
        status = await client.request(payload(i), timeout)
        out[i] = Outcome(i, at - start, sent - start, loop.time() - start, status)
        progress.count(status)

    tasks: list[asyncio.Task[None]] = []
    with _no_gc():
        for i, offset in enumerate(offsets):
            if offset > deadline:
                break
            at = start + offset
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, at)))
            progress.sent += 1
        remaining = start + deadline - loop.time()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.001))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    now = loop.time() - start
    return [
        o if o is not None else Outcome(i, offsets[i], offsets[i], now, TIMEOUT)
        for i, o in enumerate(out)
    ]


async def closed_loop(
    client: Client,
    clients: int,
    total: int,
    payload: bytes,
    *,
    timeout: float,
    deadline: float,
    progress: Progress,
) -> list[Outcome]:
    """``clients`` concurrent clients, each sending its next request as soon as the previous
    one answers, until ``total`` were sent or ``deadline`` seconds passed."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    out: list[Outcome] = []

    async def worker() -> None:
        while progress.sent < total and loop.time() - start < deadline:
            progress.sent += 1
            sent = loop.time() - start
            status = await client.request(payload, timeout)
            out.append(Outcome(len(out), sent, sent, loop.time() - start, status))
            progress.count(status)

    with _no_gc():
        workers = [loop.create_task(worker()) for _ in range(clients)]
        _, pending = await asyncio.wait(workers, timeout=deadline + timeout)
        for t in pending:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
    return out
