"""The end-of-request service: Envoy's gRPC access log releases leases.

Envoy writes one entry per finished HTTP request (success, upstream failure or client
disconnect alike) carrying the stream's dynamic metadata, where ext_proc left the lease
id. An entry releases the lease that id names or, without our metadata, the lease of its
request id, which Envoy made itself; no client header can name or end a lease.

This is how a request's end normally arrives in own-Envoy mode, not the only release: a
lease whose end is never logged is reclaimed at its deadline, or sooner when the replica's
scraped metrics show fewer requests running than were leased to it. In endpoint-picker
mode the ext_proc stream's end releases (``warmroute.epp.protocol``); no access log there.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2_grpc
from google.protobuf import empty_pb2

from warmroute.director import Director
from warmroute.envoy_names import METADATA_NAMESPACE
from warmroute.metrics import Metrics
from warmroute.state import EndReason, Registry
from warmroute.state.outlier import Outcome, classify

logger = logging.getLogger(__name__)

_FINAL = (accesslog_pb2.AccessLogType.NotSet, accesslog_pb2.AccessLogType.DownstreamEnd)


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Ends the lease each entry names through ``director.finish`` (the completion step
    both front ends share); finds leases in ``registry``; counts entries in ``metrics``."""

    def __init__(self, director: Director, registry: Registry, metrics: Metrics) -> None:
        self._director = director
        self._registry = registry
        self._metrics = metrics
        self._entries = metrics.access_log_entries
        self._streams: set[asyncio.Task[object]] = set()

    def close_streams(self) -> None:
        """End every open stream, so Envoy reconnects (to whoever leads now). Entries for
        leases this instance no longer holds must not be sent here."""
        for task in list(self._streams):
            task.cancel()

    async def StreamAccessLogs(
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await self._consume(context)
        finally:
            self._streams.discard(task)
        return empty_pb2.Empty()

    async def _consume(self, context: grpc.aio.ServicerContext) -> None:
        # context.read() rather than ``async for`` over the request iterator: one layer
        # of async generator less per entry.
        node = ""
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.HasField("identifier"):
                node = message.identifier.node.id
                logger.info("access-log stream opened by Envoy node %r", node)
            for entry in message.http_logs.log_entry:
                self.finish(entry)
        logger.info("access-log stream from Envoy node %r ended", node)

    def finish(self, entry: accesslog_pb2.HTTPAccessLogEntry) -> None:
        """Release the lease an entry names and record how the request ended."""
        common = entry.common_properties
        if common.intermediate_log_entry or common.access_log_type not in _FINAL:
            return
        self._entries.inc()
        ours = common.metadata.filter_metadata.get(METADATA_NAMESPACE)
        if ours is None:
            # Rejected or answered before routing; or leased, but the client left before
            # Envoy applied our answer. Envoy makes every request id (use_remote_address),
            # so the id names that lease and no client can forge it.
            orphan = self._registry.lease_for_request(entry.request.request_id)
            if orphan is not None:
                orphan.release(EndReason.CANCELLED)
                logger.info(
                    "request %s ended before Envoy applied lease %s; released",
                    orphan.request_id, orphan.id[:8],
                )  # fmt: skip
            return
        lease_id = ours.fields["lease"].string_value
        lease = self._registry.lease(lease_id)
        if lease is None:
            upstream = _address(common.upstream_remote_address)
            if upstream and self._registry.inflight.unknown_end(upstream, lease_id):
                # A previous process's request: one fewer may still run there.
                logger.info(
                    "request %s (lease %s of a previous control plane) ended on %s",
                    entry.request.request_id, lease_id[:8], upstream,
                )  # fmt: skip
                return
            self._metrics.unknown_lease.inc()
            logger.warning(
                "request %s ended but lease %s is not active (already expired?)",
                entry.request.request_id, lease_id[:8],
            )  # fmt: skip
            return
        upstream = _address(common.upstream_remote_address)
        response = entry.response
        code = response.response_code.value
        flags = common.response_flags
        if upstream and upstream != lease.address:
            self._metrics.upstream_mismatch.labels(lease.pool.name).inc()
            logger.error(
                "request %s was leased %s but Envoy sent it to %s",
                lease.request_id, lease.address, upstream,
            )  # fmt: skip
            for_replica = Outcome.IGNORED  # it says nothing of the replica we leased
        else:
            for_replica = _for_replica(code, response.response_code_details, flags)
        outcome = _outcome(code, flags)
        duration = common.time_to_last_downstream_tx_byte
        self._director.finish(lease, outcome, for_replica, duration.seconds + duration.nanos * 1e-9)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s ended on %s: %s %d, lease %s released",
                lease.request_id, lease.address, outcome, code, lease.id[:8],
            )  # fmt: skip


def _address(addr: object) -> str:
    sa = addr.socket_address  # type: ignore[attr-defined]
    if not sa.address:
        return ""
    return f"{sa.address}:{sa.port_value}"


def _for_replica(code: int, details: str, flags: accesslog_pb2.ResponseFlags) -> Outcome:
    """How the request counts for its replica's outlier detection: ``via_upstream`` is
    Envoy's response code detail for a status the replica itself sent; the flags say
    whether Envoy saw the replica fail (refused, reset, protocol error, timeout) or the
    client leave. Envoy's own refusals (overflow, no route, no healthy host) count for
    nothing."""
    return classify(
        code,
        answered=details == "via_upstream",
        upstream_failed=(
            flags.upstream_connection_failure
            or flags.upstream_remote_reset
            or flags.upstream_connection_termination
            or flags.upstream_request_timeout
            or flags.upstream_protocol_error
            or flags.upstream_max_stream_duration_reached
        ),
        client_gone=flags.downstream_connection_termination or flags.downstream_remote_reset,
    )


def _outcome(code: int, flags: accesslog_pb2.ResponseFlags) -> str:
    if flags.downstream_connection_termination or flags.downstream_remote_reset or code == 0:
        return "client_disconnect"
    if flags.upstream_request_timeout:
        return "upstream_timeout"
    if (
        flags.upstream_connection_failure
        or flags.upstream_remote_reset
        or flags.upstream_connection_termination
        or code >= 500
    ):
        return "upstream_error"
    if code >= 400:
        return "client_error"
    return "success"
