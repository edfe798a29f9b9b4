"""Prometheus metrics. Adapters record events here; gauges are read from registry views.

Every metric lives in a private ``CollectorRegistry`` so several control planes (tests)
can run in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from warmroute import errors
from warmroute.state import Phase, RegistryView
from warmroute.xds.cache import EventKind, StreamEvent

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Every value of warmroute_requests_total's ``outcome`` label.
OUTCOMES = (
    "success",
    "client_error",
    "upstream_error",
    "upstream_timeout",
    "client_disconnect",
    *(f"rejected_{cls.code}" for cls in errors.RequestRejected.__subclasses__()),
)
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """All of warmroute's metrics. Safe to use from the event loop thread."""

    def __init__(
        self,
        view: Callable[[], RegistryView],
        xds_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "warmroute_requests",
            "Requests by pool and outcome (success, client_error, upstream_error, "
            "client_disconnect, rejected_*).",
            ["pool", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "warmroute_queue_wait_seconds",
            "Time a request waited for a free slot (0 when one was free).",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decision = Histogram(
            "warmroute_decision_seconds",
            "ext_proc time to pick a replica, excluding queue wait.",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "warmroute_request_duration_seconds",
            "Envoy-reported time from request start to last byte sent downstream.",
            ["pool"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_mismatch = Counter(
            "warmroute_upstream_mismatch",
            "Requests Envoy sent to another replica than the leased one (must stay 0).",
            ["pool"],
            registry=r,
        )
        self.unknown_lease = Counter(
            "warmroute_access_log_unknown_lease",
            "End-of-request entries naming a lease that is no longer active "
            "(already expired or released).",
            registry=r,
        )
        self.access_log_entries = Counter(
            "warmroute_access_log_entries", "Access-log entries received from Envoy.", registry=r
        )
        self.xds_pushes = Counter(
            "warmroute_xds_pushes", "xDS responses sent, by type.", ["type"], registry=r
        )
        self.xds_acks = Counter("warmroute_xds_acks", "xDS ACKs, by type.", ["type"], registry=r)
        self.xds_nacks = Counter(
            "warmroute_xds_nacks", "xDS NACKs (Envoy rejected a config), by type.", ["type"],
            registry=r,
        )  # fmt: skip
        self.xds_push_latency = Histogram(
            "warmroute_xds_push_latency_seconds",
            "Time from an xDS push to Envoy's ACK or NACK.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.endpoint_ready = Histogram(
            "warmroute_endpoint_ready_seconds",
            "Time from a replica turning warm to every connected Envoy ACKing it in EDS.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "warmroute_config_reloads", "Config reloads, by result (applied, invalid).",
            ["result"], registry=r,
        )  # fmt: skip
        self.config_file_checks = Counter(
            "warmroute_config_file_checks",
            "Reads of the config file's content by its watcher, by cause: event (a change "
            "to the file or a path it resolves through), backstop (every 2 s).",
            ["cause"], registry=r,
        )  # fmt: skip
        for cause in ("event", "backstop"):
            self.config_file_checks.labels(cause)
        self.load_reports = Counter(
            "warmroute_envoy_load_reports",
            "Load reports (LRS) received from Envoys: requests in progress per replica.",
            registry=r,
        )
        self.discrepancies = Counter(
            "warmroute_lease_discrepancies",
            "Differences between the ledger and what Envoys report in progress: 'unleased' "
            "requests Envoy sent without a lease (counted as busy), 'lost' leases no Envoy "
            "counts any more (reclaimed).",
            ["pool", "kind"],
            registry=r,
        )
        self.scale_events = Counter(
            "warmroute_scale_decisions", "Autoscaling decisions, by pool and direction.",
            ["pool", "direction"], registry=r,
        )  # fmt: skip
        # Outlier detection (``warmroute.director.outliers`` records them; README).
        self.replica_ejections = Counter(
            "warmroute_replica_ejections",
            "Ejections of a replica whose requests failed (outlier detection).",
            ["pool", "replica"],
            registry=r,
        )
        self.replica_full_answers = Counter(
            "warmroute_replica_full_answers",
            "Answers 503 or 429 a replica sent itself (it was full): each backs it off.",
            ["pool", "replica"],
            registry=r,
        )
        r.register(_RegistryCollector(view))
        if xds_status is not None:
            r.register(_XdsNodeCollector(xds_status))
        self._pools: dict[str, PoolMetrics] = {}

    def declare(self, pools: Iterable[str]) -> None:
        """Export every outcome and the mismatch counter of these pools at 0 right away.

        An alert on ``warmroute_upstream_mismatch_total > 0`` or on a rejection rate must
        see a 0 from the first scrape, not "no data" until the first bad event.
        """
        for name in ("none", *pools):
            self.upstream_mismatch.labels(name)
            for outcome in OUTCOMES:
                self.requests.labels(name, outcome)

    def pool(self, name: str) -> PoolMetrics:
        """The per-request metrics of one pool (``"none"`` for requests no pool took)."""
        try:
            return self._pools[name]
        except KeyError:
            pm = self._pools[name] = PoolMetrics(self, name)
            return pm

    def on_stream_event(self, event: StreamEvent) -> None:
        """Count xDS stream events (an ADS StreamObserver). Per-node state (streams,
        versions, NACKs) is not counted here: ``_XdsNodeCollector`` reads it at scrape time
        from the ADS node table, through ``xds_status``."""
        kind = event.kind
        if kind is EventKind.CONNECT or kind is EventKind.DISCONNECT:
            return
        short = event.type_url.rsplit(".", 1)[-1]
        if kind is EventKind.PUSH:
            self.xds_pushes.labels(short).inc()
        else:
            (self.xds_acks if kind is EventKind.ACK else self.xds_nacks).labels(short).inc()
            if event.push_latency is not None:
                self.xds_push_latency.labels(short).observe(event.push_latency)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class PoolMetrics:
    """One pool's labelled series on the per-request path, looked up once.

    ``labels()`` costs a lock and a tuple-keyed lookup per call; the request path calls
    these several times per request. Series appear on first use, as with ``labels()``.
    Use from the event loop thread.
    """

    __slots__ = ("_duration", "_m", "_outcomes", "_timings", "name")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._m = metrics
        self.name = name
        self._timings: tuple[Histogram, Histogram] | None = None
        self._duration: Histogram | None = None
        self._outcomes: dict[str, Counter] = {}

    def decided(self, waited: float, decision: float) -> None:
        """A request got its replica after ``waited`` s in the queue and ``decision`` s of
        our own work."""
        timings = self._timings
        if timings is None:
            m, name = self._m, self.name
            timings = self._timings = (m.queue_wait.labels(name), m.decision.labels(name))
        timings[0].observe(waited)
        timings[1].observe(decision)

    def count(self, outcome: str) -> None:
        """One request ended (or was rejected) with ``outcome``."""
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self._m.requests.labels(self.name, outcome)
        counter.inc()

    def finished(self, outcome: str, duration: float) -> None:
        """A leased request ended; ``duration`` is Envoy's, 0 when it reported none."""
        self.count(outcome)
        if duration:
            hist = self._duration
            if hist is None:
                hist = self._duration = self._m.request_duration.labels(self.name)
            hist.observe(duration)


class _RegistryCollector(Collector):
    """Gauges and counters read from the registry's snapshot at scrape time."""

    def __init__(
        self,
        view: Callable[[], RegistryView],
        xds_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        replicas = GaugeMetricFamily(
            "warmroute_replicas", "Replicas by pool and phase.", labels=["pool", "phase"]
        )
        slots = GaugeMetricFamily(
            "warmroute_slots", "Slots of warm replicas by pool.", labels=["pool"]
        )
        leases = GaugeMetricFamily(
            "warmroute_leases_in_flight", "Active leases by pool.", labels=["pool"]
        )
        # Per server, not per pool: a GPU another pool also leases (a replica moved by a
        # reload, a retired pool's requests) is busy here too. Leases alone undercount it.
        busy = GaugeMetricFamily(
            "warmroute_slots_busy",
            "Busy slots on the pool's replicas: every pool's leases on each server plus "
            "load warmroute did not lease.",
            labels=["pool"],
        )
        waiting = GaugeMetricFamily(
            "warmroute_requests_waiting", "Requests waiting for a slot.", labels=["pool"]
        )
        # Pools with ``tokens:`` only (README "Token-aware slots").
        tokens = GaugeMetricFamily(
            "warmroute_tokens", "Token budget of warm replicas by pool.", labels=["pool"]
        )
        tokens_leased = GaugeMetricFamily(
            "warmroute_tokens_leased",
            "Tokens (prompt estimate plus max tokens) reserved by the pool's active leases.",
            labels=["pool"],
        )
        unleased = GaugeMetricFamily(
            "warmroute_slots_unleased",
            "Slots busy with requests Envoys report in progress beyond every pool's leases "
            "(a start's fence counts every slot it still holds).",
            labels=["pool"],
        )
        fenced = GaugeMetricFamily(
            "warmroute_replicas_fenced",
            "Replicas whose slots a start's fence still holds until their load is known.",
            labels=["pool"],
        )
        expired = _counter("warmroute_leases_expired", "Leases reclaimed at their deadline.")
        reconciled = _counter(
            "warmroute_leases_reconciled",
            "Leases reclaimed because the replica's metrics showed their request gone.",
        )
        granted = _counter(
            "warmroute_leases_granted", "Leases granted, by whether the request waited.", "waited"
        )
        # Pools with outlier detection on: 1 per replica ejected now, 0 per other replica.
        ejected = GaugeMetricFamily(
            "warmroute_replica_ejected",
            "1 while outlier detection keeps the replica from new leases, else 0.",
            labels=["pool", "replica"],
        )
        capped = _counter(
            "warmroute_replica_ejections_capped",
            "Ejections max_ejection_percent held back (too many of the pool already out).",
        )
        for pool in view.pools:
            by_phase = dict.fromkeys((p.value for p in Phase), 0)
            for rep in pool.replicas:
                by_phase[rep.phase] += 1
            for phase, n in by_phase.items():
                replicas.add_metric([pool.name, phase], n)
            slots.add_metric(
                [pool.name], sum(r.slots for r in pool.replicas if r.phase == Phase.WARM.value)
            )
            leases.add_metric([pool.name], pool.in_flight)
            busy.add_metric([pool.name], pool.busy)
            unleased.add_metric([pool.name], sum(r.unleased for r in pool.replicas))
            fenced.add_metric([pool.name], sum(r.fenced is not None for r in pool.replicas))
            waiting.add_metric([pool.name], pool.waiting)
            if (budget := pool.tokens) is not None or pool.tokens_leased:
                tokens.add_metric([pool.name], budget or 0)
                tokens_leased.add_metric([pool.name], pool.tokens_leased)
            expired.add_metric([pool.name], pool.expired)
            reconciled.add_metric([pool.name], pool.reconciled)
            granted.add_metric([pool.name, "false"], pool.granted_immediately)
            granted.add_metric([pool.name, "true"], pool.granted_after_wait)
            if pool.outlier_detection or pool.ejections:
                for rep in pool.replicas:
                    ejected.add_metric([pool.name, rep.address], int(rep.ejected))
                capped.add_metric([pool.name], pool.ejections_capped)
        yield from (replicas, slots, leases, busy, waiting, expired, reconciled, granted)
        yield from (tokens, tokens_leased, unleased, fenced, ejected, capped)


class _XdsNodeCollector(Collector):
    """Per Envoy node (``xds_status()["nodes"]``, read from the ADS node table): its open
    streams, the config version it has ACKed, the one pending, the last NACK; and the
    total of open ADS streams."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        node_config = GaugeMetricFamily(
            "warmroute_xds_node_config_info",
            "1 per Envoy node: the config version it fully ACKed and the one pending.",
            labels=["node", "acked", "pending", "connected"],
        )
        nacks = GaugeMetricFamily(
            "warmroute_xds_node_last_nack_info",
            "1 per Envoy node that has NACKed: the type and message of its last NACK.",
            labels=["node", "type", "message"],
        )
        streams = GaugeMetricFamily("warmroute_xds_streams", "Open ADS streams (connected Envoys).")
        node_streams = GaugeMetricFamily(
            "warmroute_xds_node_streams",
            "Open ADS streams per Envoy node (0: disconnected, still on its last version).",
            labels=["node", "cluster"],
        )
        total = 0
        for node, n in status.get("nodes", {}).items():
            total += n.get("streams", 0)
            node_streams.add_metric([node, n.get("cluster", "")], n.get("streams", 0))
            node_config.add_metric(
                [node, n["config"] or "", n["pending"] or "", str(n["connected"]).lower()], 1
            )
            if n["last_nack"]:
                nacks.add_metric([node, n["last_nack_type"], n["last_nack"][:200]], 1)
        streams.add_metric([], total)
        yield streams
        yield node_streams
        yield node_config
        yield nacks


def _counter(name: str, doc: str, *extra: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=["pool", *extra])
