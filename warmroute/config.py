"""YAML config validated into typed, frozen objects.

``load(path)`` raises ``ConfigError`` whose message names the file, each bad key's path
(``pools[0].queue.max_waiting``), its line, and what was expected. Nothing in the running
process changes until a config has fully validated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from warmroute.errors import ConfigError
from warmroute.state.affinity import AffinitySpec
from warmroute.state.pool import PoolSpec
from warmroute.state.priority import BandSpec, PrioritySpec
from warmroute.state.tokens import TokenSpec


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port with a port in 1..65535, got {value!r}")
    return value


def _ip_port(value: str) -> str:
    _host_port(value)
    host = value.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"expected ip:port (Envoy pins requests by IP address), got {value!r}"
        ) from None
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
IpPort = Annotated[str, AfterValidator(_ip_port)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvoyNodeConfig(_Model):
    """Settings for some Envoys of the fleet, chosen by node id or by node cluster (the
    bootstrap's ``node.cluster``, e.g. one per zone): several Envoys per host, or a
    different port per zone. An entry matching the node's id wins over one matching its
    cluster; unset keys fall back to ``envoy``'s."""

    id: str | None = None
    cluster: str | None = None
    listen: HostPort | None = None
    admin: HostPort | None = None

    @model_validator(mode="after")
    def _one_match(self) -> EnvoyNodeConfig:
        if (self.id is None) == (self.cluster is None):
            raise ValueError("give exactly one of `id` or `cluster` to choose the nodes")
        return self


class NodeAddresses(NamedTuple):
    listen: str
    admin: str


class EnvoyConfig(_Model):
    listen: HostPort = "127.0.0.1:8080"
    admin: HostPort = "127.0.0.1:19000"
    # Per-node overrides of `listen` and `admin`, by node id or node cluster.
    nodes: list[EnvoyNodeConfig] = []
    binary: str | None = None
    log_level: Literal["trace", "debug", "info", "warning", "error", "critical", "off"] = "warning"
    concurrency: int = Field(default=2, ge=1, le=256)
    # A client must finish sending its request headers within this time (slow clients
    # cannot hold connections; no slot is leased before the headers are complete).
    request_headers_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _distinct_nodes(self) -> EnvoyConfig:
        seen: set[tuple[str, str]] = set()
        for i, node in enumerate(self.nodes):
            key = ("id", node.id) if node.id is not None else ("cluster", node.cluster or "")
            if key in seen:
                raise _located(
                    f"{key[0]} {key[1]!r} is already chosen by an earlier entry", "nodes", i, key[0]
                )
            seen.add(key)
        return self

    def for_node(self, node_id: str, cluster: str = "") -> NodeAddresses:
        """Where this node's Envoy listens and serves admin."""
        chosen = next((n for n in self.nodes if n.id == node_id), None)
        if chosen is None and cluster:
            chosen = next((n for n in self.nodes if n.cluster == cluster), None)
        if chosen is None:
            return NodeAddresses(self.listen, self.admin)
        return NodeAddresses(chosen.listen or self.listen, chosen.admin or self.admin)


class EnvoyClientTls(_Model):
    """How Envoy connects to warmroute's gRPC port (files as Envoy sees them)."""

    ca_file: str  # verifies warmroute's certificate
    cert_file: str | None = None  # Envoy's client certificate (mutual TLS)
    key_file: str | None = None
    server_name: str | None = None  # SNI and the name expected in warmroute's certificate


class GrpcTlsConfig(_Model):
    """TLS (and, with client_ca_file, mutual TLS) for ADS, ext_proc and the access log."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # require and verify client certificates
    envoy: EnvoyClientTls

    @model_validator(mode="after")
    def _pairs(self) -> GrpcTlsConfig:
        if (self.envoy.cert_file is None) != (self.envoy.key_file is None):
            raise ValueError("envoy.cert_file and envoy.key_file go together")
        if self.client_ca_file and self.envoy.cert_file is None:
            raise ValueError("client_ca_file requires client certificates: set envoy.cert_file")
        return self


class ControlConfig(_Model):
    grpc: HostPort = "127.0.0.1:18000"
    admin: HostPort = "127.0.0.1:18001"
    # Envoy reaches ext_proc and the access log here (default: `grpc`). A DNS name makes
    # Envoy resolve it (STRICT_DNS), e.g. a headless Service selecting only the leader.
    advertise: HostPort | None = None
    # Envoy reaches ADS here (default: `advertise`), e.g. a Service selecting every
    # instance, leader or not.
    advertise_xds: HostPort | None = None
    tls: GrpcTlsConfig | None = None
    expire_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    lease_grace_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Envoys report their requests in progress per replica this often (LRS).
    load_report_interval_seconds: float = Field(default=0.5, ge=0.05, le=60)
    # At start, hold every slot until the load on each replica is known (Envoys' load
    # reports, its metrics, or the end of its previous requests); at most this long.
    # Default: 30 s with our own Envoys (a request Envoy routed runs on after we die);
    # 1 s as an endpoint picker (a gateway ends every request whose picker stream broke).
    start_fence: bool = True
    start_fence_grace_seconds: float | None = Field(default=None, ge=0, le=86_400)


class RolloutConfig(_Model):
    """How a new config version reaches a fleet of Envoys."""

    # Nodes that get a new version first; if empty, the first `canary_share` of connected
    # nodes (sorted by node id, at least one).
    canary_nodes: list[str] = []
    canary_share: float = Field(default=0.1, ge=0, le=1)
    # After every canary ACKed, wait this long without a NACK before promoting.
    soak_seconds: float = Field(default=10.0, ge=0, le=86_400)


class XdsConfig(_Model):
    # `sotw` (StreamAggregatedResources) or `delta` (DeltaAggregatedResources): what the
    # generated bootstrap asks Envoy to speak. The server always speaks both.
    variant: Literal["sotw", "delta"] = "sotw"
    rollout: RolloutConfig = RolloutConfig()


class RoutingConfig(_Model):
    model_header: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "x-model"
    # When warmroute cannot be reached: false (default) answers 503, so no request lands
    # on a busy replica; true lets Envoy route without a lease (its fallback policy,
    # least-request), trading the slot guarantee for availability.
    failure_mode_allow: bool = False
    # With failure_mode_allow false, Envoy's 503 for "warmroute unreachable" carries this
    # Retry-After (and JSON code control_plane_unavailable): a restart takes a second or
    # two, a leader failover up to kubernetes.leader_election.lease_seconds.
    unreachable_retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    # Requests whose model is in the JSON body are buffered whole by Envoy before routing;
    # a body over this size is answered 413 (it would not fit Envoy's buffer).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # Requests that carry the model header are still parsed by Envoy to check that the
    # body names the same model (400 model_mismatch otherwise). false skips that parse on
    # header-routed requests (measured: ~2.7 ms of Envoy CPU per 200 KB prompt; see README);
    # requests without the header are always read.
    verify_body_model: bool = True


class QueueConfig(_Model):
    max_waiting: int = Field(default=1000, ge=0, le=1_000_000)
    timeout_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # Answer 503 + Retry-After at once, instead of queueing, a request whose predicted
    # wait (learned service time, slots there are or are coming) and the pool's cold start
    # both exceed its queue timeout: it would only time out. See README "Wait for a warm
    # replica or start a cold one".
    reject_when_unmeetable: bool = False


class TokensConfig(_Model):
    """A replica's capacity in tokens as well as requests (README "Token-aware slots")."""

    # Tokens one replica holds at once: prompts plus completions of its running requests.
    capacity: int = Field(ge=1, le=1_000_000_000)
    # What a request without max_tokens (or max_completion_tokens) reserves for its answer.
    default_max_tokens: int = Field(default=1024, ge=0, le=1_000_000_000)
    # Request body bytes per prompt token, for the prompt estimate (warmroute never tokenizes).
    chars_per_token: float = Field(default=4.0, gt=0, le=1_000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _default_fits(self) -> TokensConfig:
        if self.default_max_tokens > self.capacity:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} is over capacity "
                f"{self.capacity}: a request without max_tokens could never be served"
            )
        return self

    def spec(self) -> TokenSpec:
        return TokenSpec(self.capacity, self.default_max_tokens, self.chars_per_token)


HeaderName = Annotated[str, Field(pattern=r"^[a-z0-9-]+$", max_length=128)]


class BandConfig(_Model):
    name: Name
    # Unset: the pool's queue.max_waiting / queue.timeout_seconds.
    max_waiting: int | None = Field(default=None, ge=0, le=1_000_000)
    timeout_seconds: float | None = Field(default=None, gt=0, le=86_400)


class FairnessConfig(_Model):
    # Requests with the same value of this header share a lane of their band; lanes take
    # turns. Without the header a request is in the band's no-key lane.
    header: HeaderName


class PriorityConfig(_Model):
    """Bands in priority order (the first is served first); see README "Priorities"."""

    bands: list[BandConfig] = Field(min_length=1, max_length=16)
    # The band of a request that names none (or an unknown one); default: the last band.
    default: Name | None = None
    # A request header naming the request's band; an unknown name is ignored.
    header: HeaderName | None = None
    # model -> band; a band the header names wins.
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], Name] = {}
    fairness: FairnessConfig | None = None

    @model_validator(mode="after")
    def _bands_known(self) -> PriorityConfig:
        names = [b.name for b in self.bands]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _located(f"band {name!r} is listed twice", "bands", i, "name")
        if self.default is not None and self.default not in names:
            raise _located(f"default band {self.default!r} is not one of {names}", "default")
        for model, band in self.models.items():
            if band not in names:
                raise _located(f"band {band!r} is not one of {names}", "models", model)
        return self

    def spec(self, queue: QueueConfig) -> PrioritySpec:
        names = [b.name for b in self.bands]
        return PrioritySpec(
            bands=tuple(
                BandSpec(
                    b.name,
                    queue.max_waiting if b.max_waiting is None else b.max_waiting,
                    queue.timeout_seconds if b.timeout_seconds is None else b.timeout_seconds,
                )
                for b in self.bands
            ),
            default=len(names) - 1 if self.default is None else names.index(self.default),
            header=self.header or "",
            model_bands=tuple((m, names.index(b)) for m, b in self.models.items()),
            fairness_header=self.fairness.header if self.fairness else "",
        )

    def max_timeout(self, queue: QueueConfig) -> float:
        return max(b.queue_timeout for b in self.spec(queue).bands)


class ProbeConfig(_Model):
    path: Annotated[str, Field(pattern=r"^/")] = "/health"
    expected_status: int = Field(default=200, ge=100, le=599)
    interval_seconds: float = Field(default=0.5, gt=0, le=3600)
    timeout_seconds: float = Field(default=1.0, gt=0, le=600)


class ReplicaConfig(_Model):
    address: IpPort
    slots: int | None = Field(default=None, ge=1, le=100_000)


Slots = Annotated[int, Field(ge=1, le=100_000)]
_SLOTS = TypeAdapter(Slots)
_SLOTS_LIST = TypeAdapter(Annotated[list[Slots], Field(min_length=1)])


class SimulateConfig(_Model):
    """Start simulated replicas for this pool (``warmroute up`` only)."""

    replicas: int = Field(default=4, ge=0, le=256)
    # Concurrent requests per simulated replica: one number for all, or a list with one
    # per replica (`[1, 2, 4]`; its length is `replicas` unless set). Default: the pool's.
    slots: Slots | list[Slots] | None = None
    host: str = "127.0.0.1"
    base_port: int = Field(default=9001, ge=1, le=65535)
    load_seconds: float = Field(default=2.0, ge=0)
    distribution: Literal["fixed", "lognormal"] = "lognormal"
    median_ms: float = Field(default=200.0, gt=0)
    sigma: float = Field(default=0.5, ge=0)
    seed: int | None = None
    # A request with max_tokens (or max_completion_tokens) takes ttft + tokens * per_token;
    # one without, a sample of the distribution above.
    ttft_ms: float = Field(default=20.0, ge=0, le=3_600_000, allow_inf_nan=False)
    per_token_ms: float = Field(default=5.0, ge=0, le=600_000, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _replicas_from_slots(cls, data: Any) -> Any:
        slots = data.get("slots") if isinstance(data, dict) else None
        if isinstance(slots, list) and len(slots) > 1 and "replicas" not in data:
            return {**data, "replicas": len(slots)}
        return data

    @field_validator("slots", mode="before")
    @classmethod
    def _slots(cls, value: Any, info: ValidationInfo) -> Any:
        # Validated here so an error names `slots` or `slots[i]`, not a union member.
        if value is None:
            return None
        if not isinstance(value, list):
            return _SLOTS.validate_python(value)
        slots = _SLOTS_LIST.validate_python(value)
        replicas = info.data.get("replicas")
        if len(slots) > 1 and replicas is not None and len(slots) != replicas:
            raise ValueError(
                f"lists {len(slots)} slot counts for {replicas} replicas: give one per "
                "replica, or a single number for all"
            )
        return slots

    def slots_of(self, index: int, default: int) -> int:
        """Slots of simulated replica ``index``; ``default`` (the pool's) if none are set."""
        if self.slots is None:
            return default
        if isinstance(self.slots, int):
            return self.slots
        return self.slots[index] if len(self.slots) > 1 else self.slots[0]


class ScaleTarget(_Model):
    kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    name: Name


class KubernetesPoolConfig(_Model):
    """Discover this pool's replicas as Pods (list + watch) instead of a static list."""

    namespace: Name = "default"
    selector: dict[str, str] = Field(min_length=1)  # matchLabels of the model-server pods
    port: int | str = 8000  # container port (number, or the name of a declared port)
    target: ScaleTarget | None = None  # what autoscaling scales (scale subresource)


class InferencePoolRef(_Model):
    """Discover this pool's replicas from a Gateway API Inference Extension ``InferencePool``
    (``inference.networking.k8s.io/v1``): its ``spec.selector.matchLabels`` picks the Pods
    (in the InferencePool's namespace), and each ready Pod IP x each ``spec.targetPorts``
    number is one replica ``ip:port``."""

    namespace: Name = "default"
    name: Name


class AffinityConfig(_Model):
    """How ``policy: prefix_affinity`` recognises related requests (README "Affinity")."""

    # A preferred replica wins only if it has at most this many more requests in flight
    # than the least busy free replica.
    max_imbalance: int = Field(default=2, ge=0, le=100_000)
    # Prompt characters per hashed block; 0: no prompt hashing (session affinity only, and
    # in own-Envoy mode the body is then never sent to warmroute).
    block_chars: int = Field(default=256, ge=0, le=1_000_000)
    max_blocks: int = Field(default=128, ge=1, le=4096)
    # Requests with the same value of this header go to the replica that served the
    # session last (when free, within max_imbalance).
    session_header: HeaderName | None = None
    # Keys (block hashes, sessions) remembered per pool, least recently granted dropped.
    memory: int = Field(default=65_536, ge=1, le=10_000_000)

    def spec(self) -> AffinitySpec:
        return AffinitySpec(
            max_imbalance=self.max_imbalance,
            block_chars=self.block_chars,
            max_blocks=self.max_blocks,
            session_header=self.session_header or "",
            memory=self.memory,
        )


class AutoscaleConfig(_Model):
    """Request-time scaling: queued demand asks for replicas at once, idle pools shrink."""

    min_replicas: int = Field(default=0, ge=0, le=10_000)
    max_replicas: int = Field(default=8, ge=1, le=10_000)
    # At least this long between scale-ups. 0 is safe: each decision counts the capacity
    # already on its way (loading, or asked for and not yet discovered).
    scale_up_interval_seconds: float = Field(default=0.0, ge=0, le=3600)
    # A pool with no request for this long scales down to min_replicas.
    idle_seconds: float = Field(default=300.0, gt=0, le=7 * 86_400)
    # every_wait: one replica per waiter not covered by capacity on its way. predictive:
    # start one only when it would serve the last waiter sooner than the warm ones
    # (learned service time vs cold start) or the wait exceeds the queue timeout. Opt-in:
    # it trusts cold_start_seconds until a cold start is measured, so set that first.
    mode: Literal["every_wait", "predictive"] = "every_wait"
    # A replica's cold start (LOADING to WARM) until one is measured in this pool.
    cold_start_seconds: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class ScrapeConfig(_Model):
    """Read the model server's own metrics (vLLM, SGLang, Triton names) to spot traffic
    warmroute did not lease."""

    path: Annotated[str, Field(pattern=r"^/")] = "/metrics"
    interval_seconds: float = Field(default=2.0, gt=0, le=3600)
    # A replica reporting fewer requests than warmroute leased it has lost some ends of
    # requests (e.g. the access-log stream broke): leases older than this are reclaimed.
    reconcile_after_seconds: float = Field(default=5.0, gt=0, le=86_400)


class PoolConfig(_Model):
    name: Name
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1)
    slots: int = Field(default=1, ge=1, le=100_000)
    policy: Literal["least_loaded", "first_free", "prefix_affinity"] = "least_loaded"
    # Only with policy prefix_affinity (its defaults apply when omitted).
    affinity: AffinityConfig | None = None
    max_request_seconds: float = Field(default=600.0, gt=0, le=7 * 86_400)
    queue: QueueConfig = QueueConfig()
    priority: PriorityConfig | None = None
    # A token budget per replica as well as slots (None: slots only).
    tokens: TokensConfig | None = None
    probe: ProbeConfig | None = ProbeConfig()
    replicas: list[ReplicaConfig] = []
    simulate: SimulateConfig | None = None
    kubernetes: KubernetesPoolConfig | None = None
    inference_pool: InferencePoolRef | None = None
    autoscale: AutoscaleConfig | None = None
    metrics: ScrapeConfig | None = None

    @model_validator(mode="after")
    def _simulated_slots_cover_autoscale(self) -> PoolConfig:
        sim, scale = self.simulate, self.autoscale
        listed = len(sim.slots) if sim and isinstance(sim.slots, list) else 0
        if scale and 1 < listed < scale.max_replicas:
            raise ValueError(
                f"simulate.slots lists {listed} slot counts but autoscale.max_replicas "
                f"is {scale.max_replicas}: list one per replica the scaler may start, or give "
                "a single number"
            )
        return self

    @model_validator(mode="after")
    def _affinity_needs_its_policy(self) -> PoolConfig:
        if self.affinity is not None and self.policy != "prefix_affinity":
            raise ValueError(
                f"`affinity` only applies with `policy: prefix_affinity` (policy is {self.policy})"
            )
        return self

    @model_validator(mode="after")
    def _one_source(self) -> PoolConfig:
        if self.kubernetes is not None and (self.replicas or self.simulate):
            raise ValueError(
                "a pool gets replicas from `kubernetes` or from `replicas`/`simulate`, not both"
            )
        if self.inference_pool is not None:
            others = [
                key
                for key, value in (
                    ("kubernetes", self.kubernetes),
                    ("replicas", self.replicas),
                    ("simulate", self.simulate),
                )
                if value
            ]
            if others:
                raise ValueError(
                    f"`inference_pool` cannot be combined with `{'`, `'.join(others)}`: a pool "
                    "gets replicas from exactly one source"
                )
            if self.autoscale is not None:
                raise ValueError(
                    "`autoscale` is not supported with `inference_pool` (an InferencePool "
                    "names no workload to scale); scale the model-server workload yourself"
                )
        return self

    @field_validator("replicas", mode="before")
    @classmethod
    def _short_replicas(cls, value: Any) -> Any:
        # Allow `- 127.0.0.1:9001` as shorthand for `- {address: 127.0.0.1:9001}`.
        if isinstance(value, list):
            return [{"address": v} if isinstance(v, str) else v for v in value]
        return value

    def spec(self, lease_grace_seconds: float = 5.0) -> PoolSpec:
        return PoolSpec(
            lease_grace_seconds=lease_grace_seconds,
            reconcile_after_seconds=(self.metrics.reconcile_after_seconds if self.metrics else 5.0),
            name=self.name,
            models=tuple(self.models),
            max_waiting=self.queue.max_waiting,
            queue_timeout=self.queue.timeout_seconds,
            max_request_seconds=self.max_request_seconds,
            policy=self.policy,
            priority=self.priority.spec(self.queue) if self.priority else None,
            tokens=self.tokens.spec() if self.tokens else None,
            affinity=(
                (self.affinity or AffinityConfig()).spec()
                if self.policy == "prefix_affinity"
                else None
            ),
        )

    def replica_slots(self, replica: ReplicaConfig) -> int:
        return replica.slots if replica.slots is not None else self.slots

    def simulated_replicas(self) -> list[ReplicaConfig]:
        """Simulated replicas started up front (an autoscaled pool starts its own)."""
        sim = self.simulate
        if sim is None or self.autoscale is not None:
            return []
        return [
            ReplicaConfig(address=f"{sim.host}:{sim.base_port + i}", slots=self.simulated_slots(i))
            for i in range(sim.replicas)
        ]

    def simulated_slots(self, index: int) -> int:
        """Slots of simulated replica ``index`` (``simulate.slots``, else the pool's)."""
        return self.simulate.slots_of(index, self.slots) if self.simulate else self.slots

    def all_replicas(self) -> list[ReplicaConfig]:
        return [*self.replicas, *self.simulated_replicas()]


class LeaderElectionConfig(_Model):
    """One instance leases requests; the others serve xDS and stand by."""

    enabled: bool = False
    namespace: Name = "default"
    lease_name: Name = "warmroute-leader"
    identity: str | None = None  # default: hostname-pid
    # A standby takes over once it has seen the Lease record unchanged for this long, timed
    # on its own monotonic clock (never by comparing clocks with the holder's renewTime).
    lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    # The leader renews this often while renewals succeed.
    renew_seconds: float = Field(default=5.0, gt=0, le=3600)
    # The leader stops leading by itself unless a renewal it started within this long
    # succeeded; below lease_seconds, so it has stopped before any standby may take over.
    # Default: two thirds of lease_seconds (client-go's 10 s of 15 s).
    renew_deadline_seconds: float | None = Field(default=None, gt=0, le=3600)
    # A failed call is retried after this long, and a standby polls this often.
    # Default: renew_seconds, at most 2 s (client-go's retry period).
    retry_seconds: float | None = Field(default=None, gt=0, le=3600)
    # Each API call gives up after this long (the leader's also when its deadline comes).
    # Default: the renew deadline.
    request_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    # A new leader treats every slot as taken until the replica's metrics show otherwise,
    # or this long has passed (the old leader's requests may still be running).
    takeover_grace_seconds: float = Field(default=30.0, ge=0, le=86_400)

    @property
    def renew_deadline(self) -> float:
        if self.renew_deadline_seconds is not None:
            return self.renew_deadline_seconds
        return self.lease_seconds * 2 / 3

    @property
    def retry(self) -> float:
        return (
            self.retry_seconds if self.retry_seconds is not None else min(self.renew_seconds, 2.0)
        )

    @property
    def request_timeout(self) -> float:
        if self.request_timeout_seconds is not None:
            return self.request_timeout_seconds
        return self.renew_deadline

    @model_validator(mode="after")
    def _deadline_before_expiry(self) -> LeaderElectionConfig:
        deadline = self.renew_deadline
        if deadline >= self.lease_seconds:
            raise ValueError(
                f"renew_deadline_seconds ({deadline:g}) must be below lease_seconds "
                f"({self.lease_seconds:g}): the leader must stop leading before a standby "
                "may take over"
            )
        for key, value in (("renew_seconds", self.renew_seconds), ("retry_seconds", self.retry)):
            if value >= deadline:
                raise ValueError(
                    f"{key} ({value:g}) must be below the renew deadline ({deadline:g}, "
                    "renew_deadline_seconds or two thirds of lease_seconds): the leader "
                    "would stop leading between two renewals"
                )
        return self


class KubernetesConfig(_Model):
    kubeconfig: str | None = None  # default: in-cluster config, else ~/.kube/config
    # Tests and local API servers: talk to this URL with no credentials.
    api_url: str | None = None
    leader_election: LeaderElectionConfig = LeaderElectionConfig()


class EppTlsFiles(_Model):
    """The picker port's certificate and key (PEM files)."""

    cert_file: str
    key_file: str


class EppConfig(_Model):
    """Endpoint picker mode: a gateway owns Envoy and asks us over ext_proc (the Gateway API
    Inference Extension's endpoint picker protocol). The gRPC port then serves the picker
    (and gRPC health), not ADS or the access log."""

    enabled: bool = False
    # The pool (one InferencePool) this picker serves; default: the only pool.
    pool: Name | None = None
    # on: control.tls if set, else a self-signed certificate made at start; off: plaintext;
    # or {cert_file, key_file}.
    tls: bool | EppTlsFiles = True

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_words(cls, value: Any) -> Any:
        # `tls: on/off` are YAML booleans already; accept the quoted words too.
        if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
            return value.lower() in ("on", "true")
        if value is None:
            return False
        if isinstance(value, dict):
            return EppTlsFiles.model_validate(value)  # its errors keep their key paths
        if not isinstance(value, bool | EppTlsFiles):
            raise ValueError(f"expected on, off or {{cert_file, key_file}}; got {value!r}")
        return value


class Config(_Model):
    envoy: EnvoyConfig = EnvoyConfig()
    control: ControlConfig = ControlConfig()
    routing: RoutingConfig = RoutingConfig()
    xds: XdsConfig = XdsConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    pools: list[PoolConfig] = Field(min_length=1)
    epp: EppConfig = EppConfig()

    @model_validator(mode="after")
    def _epp_pool(self) -> Config:
        epp = self.epp
        if not epp.enabled:
            return self
        names = [p.name for p in self.pools]
        if epp.pool is None and len(names) > 1:
            problem, loc = f"set it to one of {', '.join(names)} (there are several pools)", "pool"
        elif epp.pool is not None and epp.pool not in names:
            problem, loc = f"{epp.pool!r} is not a pool; expected one of {', '.join(names)}", "pool"
        else:
            return self
        raise ValidationError.from_exception_data(
            "Config",
            [
                InitErrorDetails(
                    type=PydanticCustomError("value_error", problem),
                    loc=("epp", loc),
                    input=epp.pool,
                )
            ],
        )

    @property
    def epp_pool(self) -> str:
        """The pool the endpoint picker serves (``epp.pool``, else the only pool)."""
        return self.epp.pool or self.pools[0].name

    @model_validator(mode="after")
    def _unique(self) -> Config:
        # Each error points at the second occurrence (``at``: its key path), not the top.
        seen_pools: set[str] = set()
        seen_models: dict[str, str] = {}
        seen_addresses: dict[str, str] = {}
        for i, pool in enumerate(self.pools):
            if pool.name in seen_pools:
                raise _located(
                    f"pool name {pool.name!r} is used twice; names must be unique",
                    "pools", i, "name",
                )  # fmt: skip
            seen_pools.add(pool.name)
            for k, model in enumerate(pool.models):
                if model in seen_models:
                    raise _located(
                        f"model {model!r} is served by pools {seen_models[model]!r} and "
                        f"{pool.name!r}; a model must map to one pool",
                        "pools", i, "models", k,
                    )  # fmt: skip
                seen_models[model] = pool.name
            listed = len(pool.replicas)
            for j, replica in enumerate(pool.all_replicas()):
                if replica.address in seen_addresses:
                    at = ("replicas", j) if j < listed else ("simulate",)
                    raise _located(
                        f"replica {replica.address} is listed in pools "
                        f"{seen_addresses[replica.address]!r} and {pool.name!r}",
                        "pools", i, *at,
                    )  # fmt: skip
                seen_addresses[replica.address] = pool.name
        return self

    def specs(self) -> list[PoolSpec]:
        return [p.spec(self.control.lease_grace_seconds) for p in self.pools]

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def max_queue_timeout(self) -> float:
        return max(
            p.priority.max_timeout(p.queue) if p.priority else p.queue.timeout_seconds
            for p in self.pools
        )


def _located(message: str, *at: str | int) -> PydanticCustomError:
    """A model-level error that ``_describe`` reports at the key path ``at``."""
    return PydanticCustomError("located", message, {"at": at})


# -- loading -------------------------------------------------------------------------------


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from exc
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> Config:
    """Validate YAML text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"not valid YAML{where}: {problem}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, got {_kind(data)}"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, node) for e in exc.errors()]) from exc


def default() -> Config:
    """The built-in config ``warmroute up`` uses when given none."""
    text = resources.files("warmroute.defaults").joinpath("demo.yaml").read_text()
    return parse(text, "<built-in demo config>")


def enable_epp(cfg: Config, source: str = "<config>") -> Config:
    """``cfg`` in endpoint picker mode (``serve --epp``), validated again: ConfigError if,
    say, ``epp.pool`` is needed and unset."""
    if cfg.epp.enabled:
        return cfg
    data = cfg.model_dump()
    data["epp"]["enabled"] = True
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, None) for e in exc.errors()]) from exc


def _describe(error: Mapping[str, Any], root: yaml.Node | None) -> str:
    loc: Sequence[str | int] = error.get("loc", ())
    # Pydantic adds validator names ('function-after[...]') and union member tags ('int',
    # 'str', 'list[...]') to loc; they are not keys of the file.
    loc = [p for p in loc if isinstance(p, int) or not _is_pydantic_tag(p)]
    at = (error.get("ctx") or {}).get("at")
    if at:
        loc = [*loc, *at]
    key = _format_loc(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f" (line {line})" if line else ""
    msg = str(error.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if error.get("type") == "extra_forbidden":
        msg = "unknown key (check the spelling; see `warmroute config example`)"
    elif error.get("type") == "missing":
        msg = "required key is missing"
    elif "input" in error and error.get("type") not in (
        "value_error",
        "assertion_error",
        "located",
    ):
        msg = f"{msg}; got {error['input']!r}"
    return f"{key}{where}: {msg}"


_PYDANTIC_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "literal"})


def _is_pydantic_tag(part: str) -> bool:
    return part in _PYDANTIC_TAGS or "[" in part or part.startswith("function-")


def _format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc``."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, _ in node.value if k.value == part), None)
            if child is None:
                return line
            line = (key or child).start_mark.line + 1
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def example() -> str:
    """The documented example config (the built-in demo)."""
    return resources.files("warmroute.defaults").joinpath("demo.yaml").read_text()
