"""What the prefix scenario measures and the shape of its results: tenants' system prompts
and the Zipf, Poisson trace (``--quick`` and ``--smoke`` shrink it), the contenders
(policy, session header), each request's body and headers, the ideal's service times,
and ``Run``: one contender's outcomes and cache hits. Pure. Shared by the scenario
(``prefix``) and its page (``prefix_report``); imports neither.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from bench.lib.loadgen import Outcome
from bench.lib.stats import percentile
from bench.lib.trace import Lognormal, phase_seed
from bench.lib.util import MODEL

POOL = "main"


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float  # seconds of arrivals
    replicas: int = 4
    slots: int = 2
    tenants: int = 24
    zipf: float = 0.8  # tenant popularity ~ 1 / rank**zipf
    system_chars: int = 2048
    question_chars: tuple[int, int] = (40, 400)
    service: Lognormal = field(default_factory=lambda: Lognormal(300.0, 0.5))
    speedup: float = 3.0  # a whole prompt cached: service / speedup
    block_chars: int = 256  # the replicas' and warmroute's
    cache_blocks: int = 96  # per replica: about 10 system prompts
    load: float = 0.85  # of the capacity without any hit
    max_imbalance: int = 2
    # Afterwards, one at a time with no service time: what deciding costs per request
    # (for prefix_affinity: Envoy sends warmroute the body, warmroute hashes the prompt).
    overhead_requests: int = 400

    @property
    def servers(self) -> int:
        return self.replicas * self.slots

    @property
    def rate(self) -> float:
        """Arrivals per second: ``load`` of what the slots serve with no prefix hit."""
        return self.load * self.servers / (self.service.mean_ms / 1000.0)


def plan(quick: bool, smoke: bool = False) -> Plan:
    if smoke:
        return Plan(duration=1.0, overhead_requests=5)
    return Plan(duration=15.0, overhead_requests=100) if quick else Plan(duration=60.0)


CONTENDERS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    # (name, pool settings, send the tenant as x-session-id)
    ("least_loaded", {"policy": "least_loaded"}, False),
    ("prefix_affinity", {"policy": "prefix_affinity"}, False),
    (
        "session (tenant header)",
        {"policy": "prefix_affinity", "affinity": {"block_chars": 0}},
        True,
    ),
)


# -- pure parts (tests/bench/test_bench_prefix.py) ------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRequest:
    at: float  # seconds since the trace started
    service_ms: float  # without any prefix hit; sent as x-sim-service-ms
    tenant: int
    question: str

    @property
    def service_s(self) -> float:
        return self.service_ms / 1000.0


def system_prompt(tenant: int, chars: int) -> str:
    """Tenant ``tenant``'s system prompt: ``chars`` characters, distinct from the first."""
    head = f"You are the assistant of tenant {tenant}. "
    words = random.Random(tenant).choices(
        ["policy", "invoice", "refund", "order", "customer", "account", "shipping", "ticket"],
        k=chars // 5,
    )
    return (head + " ".join(words))[:chars]


def prefix_trace(p: Plan, seed: int) -> list[PrefixRequest]:
    """Poisson arrivals at ``p.rate`` for ``p.duration``; Zipf tenants; unique questions."""
    rng = random.Random(phase_seed(seed, 0))
    weights = [1.0 / (k + 1) ** p.zipf for k in range(p.tenants)]
    out: list[PrefixRequest] = []
    t = rng.expovariate(p.rate)
    n = 0
    while t < p.duration:
        tenant = rng.choices(range(p.tenants), weights)[0]
        size = rng.randint(*p.question_chars)
        question = f"q{n}: " + "".join(rng.choices("abcdefghij klmnop", k=size))
        out.append(PrefixRequest(round(t, 6), round(p.service.sample_ms(rng), 3), tenant, question))
        t += rng.expovariate(p.rate)
        n += 1
    return out


def chat_body(p: Plan, r: PrefixRequest) -> bytes:
    messages = [
        {"role": "system", "content": system_prompt(r.tenant, p.system_chars)},
        {"role": "user", "content": r.question},
    ]
    return json.dumps({"model": MODEL, "messages": messages}).encode()


def http_payload(p: Plan, r: PrefixRequest, session: bool) -> bytes:
    body = chat_body(p, r)
    extra = f"x-session-id: tenant-{r.tenant}\r\n" if session else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nx-model: {MODEL}\r\n"
        f"x-sim-service-ms: {r.service_ms:.3f}\r\n{extra}content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ideal_services(p: Plan, trace: list[PrefixRequest]) -> list[float]:
    """Each request's service (s) if every replica had cached every prompt seen before it:
    one cache shared by all, as large as needed."""
    from warmroute.sim.prefix_cache import PrefixCache

    shared = PrefixCache(p.speedup, p.block_chars, capacity_blocks=1 << 30)
    return [r.service_s * shared.serve(chat_body(p, r)).factor(p.speedup) for r in trace]


def summarize(latencies: list[float]) -> tuple[float, float, float]:
    """p50, p99 and mean (seconds), NaN if none."""
    if not latencies:
        return math.nan, math.nan, math.nan
    return percentile(latencies, 50), percentile(latencies, 99), sum(latencies) / len(latencies)


@dataclass
class Run:
    name: str
    outcomes: list[Outcome]
    hits: int  # requests whose first prompt block was cached
    blocks: int
    blocks_hit: int
    full_hits: int
    per_replica: list[int]  # requests each replica received
    sequential: list[float] = field(default_factory=list)  # the overhead phase's latencies

    @property
    def ok_latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(not o.ok for o in self.outcomes)
