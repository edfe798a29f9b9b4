"""The ADS gRPC service: one asyncio loop per Envoy stream, both protocol variants.

``AdsServer`` implements ``envoy.service.discovery.v3.AggregatedDiscoveryService`` on
grpc.aio. It sees the config plane only through ``SnapshotCache`` (``snapshot_for`` and
``changed``), and the protocol only through the synchronous state machines
``sotw.SotwStream`` and ``delta.DeltaStream``: this module owns the I/O, they own the rules.

Each stream runs one loop over one queue. A reader task puts the client's requests on it;
a watcher task puts a "changed" marker on it when the cache changes. The loop handles
every item it finds, and when the queue is empty asks the state machine what to send for
the node's current snapshot. The watcher re-arms ``changed()`` before the loop can read
the snapshot again, and the loop reads the snapshot only after taking the marker off the
queue, so a change is never lost between reading a snapshot and waiting for the next.

What a stream learns is recorded in the server's ``NodeTable`` (``nodes``: per node its
streams, cluster, ACKed, pending and NACKed versions) and then reported to the observer as
a ``StreamEvent`` (``EventKind``: CONNECT once the node is known, PUSH when a response was
written, ACK, NACK, DISCONNECT). Observers read node state from the table, which already
holds the event they are told about.

Given a ``timed`` owner (the rollout), the server also keeps one loop timer on its
``next_deadline()`` and calls its ``tick()`` then (``xds.timer``), re-armed whenever the
owner says its deadline moved, cancelled by ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from warmroute.xds.cache import EventKind, SnapshotCache, StreamEvent, StreamObserver
from warmroute.xds.delta import DeltaStream
from warmroute.xds.nodes import NodeTable
from warmroute.xds.snapshot import Snapshot
from warmroute.xds.sotw import SotwStream
from warmroute.xds.timer import DeadlineTimer

logger = logging.getLogger(__name__)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Req_contra = TypeVar("_Req_contra", contravariant=True)
_Resp_co = TypeVar("_Resp_co", covariant=True)


class _Protocol(Protocol[_Req_contra, _Resp_co]):
    """What ``SotwStream`` and ``DeltaStream`` offer the loop."""

    node_id: str

    def on_request(self, req: _Req_contra, now: float) -> list[StreamEvent]: ...

    def responses(
        self, snapshot: Snapshot, now: float
    ) -> Sequence[tuple[_Resp_co, StreamEvent]]: ...


class Timed(Protocol):
    """Something with a deadline (the rollout's end of soak): see ``xds.timer``."""

    on_deadline: Callable[[], None] | None

    def next_deadline(self) -> float | None: ...

    def tick(self) -> None: ...


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_CHANGED = _Marker("CHANGED")  # the cache changed
_CLOSE = _Marker("CLOSE")  # end the stream: the client finished, or the server closes


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """ADS over gRPC (SotW and delta), serving each node ``cache.snapshot_for(node)``.

    Every ``StreamEvent`` is first recorded in ``nodes`` (the table given, or a new one),
    then passed to ``observer``, synchronously on the event loop; the observer must not
    block (an exception it raises is logged and swallowed). ``timed``, if given, gets its
    ``on_deadline`` hook set to re-arm the server's timer for it; its deadlines must be in
    ``clock``'s time (both default to ``time.monotonic``). Runs on one event loop; not
    thread-safe.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        observer: StreamObserver | None = None,
        *,
        nodes: NodeTable | None = None,
        timed: Timed | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._observer = observer
        self._clock = clock
        self.nodes = NodeTable() if nodes is None else nodes
        self._streams: set[_Stream[Any, Any]] = set()
        self._timer: DeadlineTimer | None = None
        if timed is not None:
            self._timer = DeadlineTimer(timed.next_deadline, timed.tick, clock=clock)
            timed.on_deadline = self._timer.rearm
            self._timer.rearm()  # a deadline it already had (needs a running loop)

    @property
    def connected_nodes(self) -> dict[str, int]:
        """Node id -> open streams, for the connected nodes (a copy, read from ``nodes``)."""
        return {n.node_id: n.streams for n in self.nodes if n.connected}

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await _Stream(self, "sotw", SotwStream).run(request_iterator, context)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await _Stream(self, "delta", DeltaStream).run(request_iterator, context)

    def close_streams(self) -> None:
        """Ask every open stream to end (with status OK); returns at once."""
        for stream in list(self._streams):
            stream.close()

    async def close(self, timeout: float = 5.0) -> None:
        """End every open stream and wait (up to ``timeout`` seconds) until they have;
        cancel the deadline timer. Streams opened meanwhile are not waited for; call
        before stopping the server."""
        if self._timer is not None:
            self._timer.close()
        streams = list(self._streams)
        for stream in streams:
            stream.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for stream in streams:
                    await stream.ended.wait()

    # -- used by _Stream ---------------------------------------------------------------

    def _connected(self, node_id: str, cluster: str, variant: str, peer: str) -> None:
        logger.info(
            "node %s (cluster %r) connected (%s ADS, peer %s)", node_id, cluster, variant, peer
        )
        self._emit(StreamEvent(node_id, "", "", EventKind.CONNECT, cluster=cluster))

    def _disconnected(self, node_id: str, variant: str, why: str) -> None:
        logger.info("node %s disconnected (%s ADS): %s", node_id, variant, why)
        self._emit(StreamEvent(node_id, "", "", EventKind.DISCONNECT))

    def _emit(self, event: StreamEvent) -> None:
        kind = event.kind
        if kind is EventKind.NACK:
            logger.info(
                "node %s NACKed %s version %s: %s",
                event.node_id, event.type_url, event.version, event.error,
            )  # fmt: skip
        elif kind is EventKind.PUSH or kind is EventKind.ACK:
            logger.debug(
                "node %s %s %s version %s%s",
                event.node_id, kind.value, event.type_url, event.version,
                "" if event.push_latency is None else f" after {event.push_latency * 1e3:.1f} ms",
            )  # fmt: skip
        # The table first: observers read it and must find this event in it.
        self.nodes.record(event, self._clock())
        if self._observer is None:
            return
        try:
            self._observer.on_stream_event(event)
        except Exception:
            logger.exception("stream observer failed on %s", event)


class _Stream(Generic[_Req, _Resp]):
    """One ADS stream: the loop, its queue and its two helper tasks."""

    def __init__(
        self,
        server: AdsServer,
        variant: str,
        protocol: Callable[[str], _Protocol[_Req, _Resp]],
    ) -> None:
        self._server = server
        self._variant = variant
        self._protocol = protocol
        self._queue: asyncio.Queue[_Req | _Marker] = asyncio.Queue()
        self._change_queued = False
        self.ended = asyncio.Event()

    def close(self) -> None:
        self._queue.put_nowait(_CLOSE)

    async def run(self, requests: AsyncIterator[_Req], context: grpc.aio.ServicerContext) -> None:
        server = self._server
        server._streams.add(self)
        # The watcher starts first: it waits on the cache before the loop can read a
        # snapshot (which needs a request, hence the reader, hence a turn of the loop).
        watcher = asyncio.create_task(self._watch())
        reader = asyncio.create_task(self._read(requests))
        stream: _Protocol[_Req, _Resp] | None = None
        why = "client closed the stream"
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSE:
                    if reader.done():
                        why = "client closed the stream"
                    else:
                        why = "server closed the stream"
                    return
                if item is _CHANGED:
                    self._change_queued = False
                elif not isinstance(item, _Marker):
                    if stream is None:
                        stream = await self._connect(item, context)
                    for event in stream.on_request(item, server._clock()):
                        server._emit(event)
                if stream is None or not self._queue.empty():
                    continue  # answer once for a burst of requests
                node = server.nodes.get(stream.node_id)
                snapshot = server._cache.snapshot_for(stream.node_id, node.cluster if node else "")
                for response, event in stream.responses(snapshot, server._clock()):
                    await context.write(response)
                    server._emit(event)
        except asyncio.CancelledError:
            why = "stream cancelled"
            raise
        except Exception as exc:
            why = f"stream failed: {exc!r}"
            raise
        finally:
            # Bookkeeping first and without awaiting: grpc may cancel this task again
            # while it waits below.
            reader.cancel()
            watcher.cancel()
            if stream is not None:
                server._disconnected(stream.node_id, self._variant, why)
            server._streams.discard(self)
            self.ended.set()
            await asyncio.gather(reader, watcher, return_exceptions=True)

    async def _connect(
        self, first: Any, context: grpc.aio.ServicerContext
    ) -> _Protocol[_Req, _Resp]:
        node_id = str(first.node.id)
        if not node_id:
            # Only the first request carries the node; without it we cannot serve.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node.id"
            )
        cluster = str(first.node.cluster)
        self._server._connected(node_id, cluster, self._variant, context.peer())
        return self._protocol(node_id)

    async def _read(self, requests: AsyncIterator[_Req]) -> None:
        try:
            async for req in requests:
                self._queue.put_nowait(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client vanished mid-read
            logger.debug("ADS stream read ended: %r", exc)
        self._queue.put_nowait(_CLOSE)

    async def _watch(self) -> None:
        cache = self._server._cache
        while True:
            await cache.changed()
            if not self._change_queued:
                self._change_queued = True
                self._queue.put_nowait(_CHANGED)
