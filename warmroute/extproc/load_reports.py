"""Envoy's load reports (LRS): every Envoy's own count of requests in progress per replica.

Each Envoy that lists warmroute in ``cluster_manager.load_stats_config`` opens one
``StreamLoadStats`` stream. We answer its first message with ``send_all_clusters``,
``report_endpoint_granularity`` and our interval; from then on it sends, every interval,
per cluster and per endpoint, ``total_requests_in_progress``, including intervals in
which nothing new was issued (measured with Envoy 1.40, DESIGN fact 17). Envoy retries a
broken LRS stream after a fixed 5 s (measured: its ``retry_policy`` does not apply), so a
restarted control plane hears from every Envoy within ~5.5 s.

The counts go to the registry's book (``warmroute.state.inflight``), summed per address
over every cluster (an address's requests count wherever they came from: a pool's cluster,
a retired pool's, a gateway's ORIGINAL_DST cluster). After each report the book
reconciles the ledger with them; while the start's fence is up, the first round in which
every Envoy we know of has reported lifts it (``on_truth``: ``warmroute.fence.Fence``).
"Every Envoy we know of" is every node with an open ADS or LRS stream; an ADS node that
opens no LRS stream within ``LRS_WAIT_SECONDS`` of the fence (its bootstrap predates
LRS) is left out, with a warning.

Leases are reclaimed from the reports only in own-Envoy mode and only while every
connected ADS node reports: a lease held for an Envoy that does not report must not end
because the others do not count it. Runs on the registry's event loop.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import grpc
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
from google.protobuf import duration_pb2

from warmroute.metrics import Metrics
from warmroute.state import Registry

logger = logging.getLogger(__name__)

# An LRS stream that breaks is retried by Envoy after a fixed 5 s; past this, a node on
# ADS that still has no LRS stream is taken not to report at all.
LRS_WAIT_SECONDS = 6.5


class LoadReportService(lrs_pb2_grpc.LoadReportingServiceServicer):  # type: ignore[misc]
    """The LRS server. ``ads_nodes()`` lists the nodes with an open ADS stream (None in
    endpoint-picker mode, where no ADS runs); ``on_truth()`` is called when every Envoy has
    reported while the fence is up (``Fence.truth``); ``interval`` is the report interval
    asked of every Envoy."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        *,
        on_truth: Callable[[], object],
        ads_nodes: Callable[[], list[str]] | None,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._book = registry.inflight
        self._metrics = metrics
        self._on_truth = on_truth
        self._nodes = ads_nodes
        self._clock = clock
        # Many Envoys report at their own phases: reconcile at most four times an interval
        # (one pass over every busy replica each), a report in between only updates the sums.
        self._min_gap = interval / 4
        self._evaluated = -float("inf")
        self._response = lrs_pb2.LoadStatsResponse(
            send_all_clusters=True,
            load_reporting_interval=_duration(interval),
            report_endpoint_granularity=True,
        )
        self._serial = itertools.count(1)
        self._streams: dict[str, str] = {}  # stream key -> node id
        self._reported: dict[str, float] = {}  # node id -> time of its last report
        self._warned: set[str] = set()

    async def StreamLoadStats(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        node = first.node.id or context.peer()
        # Several Envoys may share a node id (a Deployment's pods): key by stream.
        key = f"{node}#{next(self._serial)}"
        self._streams[key] = node
        logger.info("load reports: stream opened by Envoy node %r", node)
        try:
            await context.write(self._response)
            if first.cluster_stats:
                self.report(key, node, first)
            while (message := await context.read()) is not grpc.aio.EOF:
                self.report(key, node, message)
        finally:
            del self._streams[key]
            self._book.forget(key)
            logger.info("load reports: stream from Envoy node %r ended", node)

    def report(self, key: str, node: str, message: lrs_pb2.LoadStatsRequest) -> None:
        """One load report from stream ``key`` of node ``node``: reconcile, maybe lift."""
        counts: dict[str, int] = {}
        for cluster in message.cluster_stats:
            for locality in cluster.upstream_locality_stats:
                for endpoint in locality.upstream_endpoint_stats:
                    n = endpoint.total_requests_in_progress
                    if n:
                        sa = endpoint.address.socket_address
                        address = f"{sa.address}:{sa.port_value}"
                        counts[address] = counts.get(address, 0) + n
        self._metrics.load_reports.inc()
        book = self._book
        book.report(key, counts)
        now = self._reported[node] = self._clock()
        if now - self._evaluated < self._min_gap and not book.fencing:
            return
        self._evaluated = now
        outcome = book.evaluate(reclaim=self._may_reclaim())
        for address, n in outcome.unleased_seen.items():
            for pool in self._pools_of(address):
                self._metrics.discrepancies.labels(pool, "unleased").inc(n)
            logger.warning(
                "Envoys report %d request(s) in progress on %s beyond warmroute's leases "
                "(failure_mode_allow, another control plane, or a lost lease grant); "
                "counted as busy",
                n, address,
            )  # fmt: skip
        for lease in outcome.lost:
            self._metrics.discrepancies.labels(lease.pool.name, "lost").inc()
            logger.warning(
                "lease %s of request %s on %s reclaimed: no Envoy counts its request any "
                "more (its end was never reported)",
                lease.id[:8], lease.request_id, lease.address,
            )  # fmt: skip
        if book.fencing and self._complete():
            self._on_truth()

    def _known(self) -> set[str]:
        """Every node that may hold requests: open LRS streams, and ADS nodes that either
        report or may still open their LRS stream."""
        known = set(self._streams.values())
        if self._nodes is not None:
            waited = self._clock() - self._book.since
            for node in self._nodes():
                if node in known:
                    continue
                if waited < LRS_WAIT_SECONDS:
                    known.add(node)
                elif node not in self._warned:
                    self._warned.add(node)
                    logger.warning(
                        "Envoy node %r sends no load reports: its bootstrap lacks "
                        "cluster_manager.load_stats_config (regenerate it with 'warmroute "
                        "bootstrap'); its requests in flight are unknown after a restart",
                        node,
                    )
        return known

    def _complete(self) -> bool:
        since = self._book.since
        reported = {n for n, at in self._reported.items() if at >= since}
        known = self._known()
        return bool(reported) and known <= reported

    def _may_reclaim(self) -> bool:
        if self._nodes is None:
            return False  # endpoint-picker mode: the stream's end releases, always
        reporting = set(self._streams.values())
        return all(node in reporting for node in self._nodes())

    def _pools_of(self, address: str) -> list[str]:
        capacity = self._registry.capacity(address)
        return [] if capacity is None else [pool.name for pool in capacity.members]


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d
