"""What a model server says about itself in its Prometheus metrics, as one frozen value.

Pure: exposition text in, :class:`ReplicaSignals` out; no I/O, no clock. The scraper owns
when a text was read (and so how stale the signals are); the routing seam owns what to
make of them.

The names read, per server (checked against each project's own docs and source, 2026-12;
"none" means the server publishes nothing for it):

- **vLLM**: running ``vllm:num_requests_running``; waiting ``vllm:num_requests_waiting``;
  KV-cache use ``vllm:kv_cache_usage_perc`` (older releases: ``vllm:gpu_cache_usage_perc``);
  LoRA ``vllm:lora_requests_info`` (labels ``max_lora``, ``running_lora_adapters``,
  ``waiting_lora_adapters``).
- **SGLang**: running ``sglang:num_running_reqs``; waiting ``sglang:num_queue_reqs``;
  KV-cache use ``sglang:token_usage``; LoRA ``sglang:lora_pool_slots_total`` and
  ``sglang:lora_pool_slots_used`` (counts; no adapter names).
- **TGI**: running ``tgi_batch_current_size``; waiting ``tgi_queue_size``; KV-cache use
  none; LoRA none.
- **Triton**: running ``nv_trt_llm_request_metrics{request_type="active"}`` (TensorRT-LLM
  backend only; core Triton has no running count); waiting
  ``nv_inference_pending_request_count`` plus ``nv_trt_llm_request_metrics
  {request_type="waiting"}``; KV-cache use ``nv_trt_llm_kv_cache_block_metrics
  {kv_cache_block_type="fraction"}`` (TensorRT-LLM backend only); LoRA none.

Sources: vLLM ``vllm/v1/metrics/loggers.py`` (0.32.0, and the recorded server in
``tests/fixtures/vllm``); SGLang ``python/sglang/srt/metrics/collector.py`` and its
"Production Metrics" page; TGI ``docs/source/reference/metrics.md`` (its only KV-related
gauge, ``tgi_batch_current_max_tokens``, is the current batch's token reservation, with
no total to divide by); Triton ``docs/user_guide/metrics.md`` (the pending count is
requests *awaiting execution* by a backend, so it is waiting, not running; core Triton
has no running count) and the TensorRT-LLM backend's ``model.py`` ``create_metrics``
(``active``: requests the executor holds; ``waiting``: queued in it). The reference
picker's ``docs/plugin-metric-protocol.md`` maps the same servers (it reads
``request_type="scheduled"`` for running: the requests scheduled in the current
iteration, which leaves out paused ones; ``active`` counts every request holding a
place, which is what a slot is).

How samples combine: counts are summed over every label set (several engines, data
parallel ranks, Triton models) and over every server whose names appear; KV-cache use is
the largest value (a replica is as full as its fullest engine); vLLM's LoRA gauge is the
label set with the newest value (its value is a timestamp; old label sets stay). NaN and
infinite samples are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# One series a signal is read from: a metric name and the labels a sample must carry.
Series = tuple[str, Mapping[str, str]]


@dataclass(frozen=True)
class _Names:
    server: str
    running: tuple[Series, ...]
    waiting: tuple[Series, ...]
    kv_cache: tuple[Series, ...]


_ANY: Mapping[str, str] = {}
_TRT = "nv_trt_llm_request_metrics"
SERVERS: tuple[_Names, ...] = (
    _Names(
        "vllm",
        running=(("vllm:num_requests_running", _ANY),),
        waiting=(("vllm:num_requests_waiting", _ANY),),
        kv_cache=(("vllm:kv_cache_usage_perc", _ANY), ("vllm:gpu_cache_usage_perc", _ANY)),
    ),
    _Names(
        "sglang",
        running=(("sglang:num_running_reqs", _ANY),),
        waiting=(("sglang:num_queue_reqs", _ANY),),
        kv_cache=(("sglang:token_usage", _ANY),),
    ),
    _Names(
        "tgi",
        running=(("tgi_batch_current_size", _ANY),),
        waiting=(("tgi_queue_size", _ANY),),
        kv_cache=(),
    ),
    _Names(
        "triton",
        running=((_TRT, {"request_type": "active"}),),
        waiting=(
            ("nv_inference_pending_request_count", _ANY),
            (_TRT, {"request_type": "waiting"}),
        ),
        kv_cache=(("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "fraction"}),),
    ),
)
VLLM_LORA = "vllm:lora_requests_info"
SGLANG_LORA_TOTAL = "sglang:lora_pool_slots_total"
SGLANG_LORA_USED = "sglang:lora_pool_slots_used"
# Every metric name read: the text is cut down to these lines before parsing.
NAMES: frozenset[str] = frozenset(
    {name for s in SERVERS for name, _ in s.running + s.waiting + s.kv_cache}
    | {VLLM_LORA, SGLANG_LORA_TOTAL, SGLANG_LORA_USED}
)


@dataclass(frozen=True)
class LoraSignals:
    """What a server says about its LoRA adapters.

    ``max_lora``: adapters one batch can hold (vLLM's ``--max-loras``; SGLang's pool
    slots), None if not published yet (vLLM publishes it only with its first label set,
    after the first request). ``running_adapters`` / ``waiting_adapters``: the names in
    vLLM's newest label set (None where the server names none: SGLang). In vLLM 0.32
    both lists are the same list, every adapter with a request running *or* waiting, and
    a request still waiting for a LoRA slot is in neither (tests/fixtures/vllm/README.md);
    so neither is "the adapters resident on the GPU". ``slots_used``: SGLang's occupied
    adapter slots (vLLM publishes no such count).
    """

    max_lora: int | None = None
    running_adapters: frozenset[str] | None = None
    waiting_adapters: frozenset[str] | None = None
    slots_used: int | None = None

    @property
    def busy_adapters(self) -> frozenset[str] | None:
        """Adapters named as running or waiting; None if the server names none."""
        if self.running_adapters is None and self.waiting_adapters is None:
            return None
        return (self.running_adapters or frozenset()) | (self.waiting_adapters or frozenset())


@dataclass(frozen=True)
class ReplicaSignals:
    """One scrape of one replica. None means "not published", never zero.

    ``server``: the first of vLLM, SGLang, TGI, Triton whose names appear (None: none
    did). ``running``: requests in the server's batch; ``waiting``: requests queued in it;
    ``kv_cache_usage``: the fraction (0..1) of its KV cache in use; ``lora``: None unless
    the server publishes LoRA metrics.
    """

    server: str | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    lora: LoraSignals | None = None

    @property
    def in_flight(self) -> int | None:
        """Requests the server holds, running or waiting; None if it publishes neither."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0) + (self.waiting or 0)


def parse_signals(text: str) -> ReplicaSignals:
    """The signals in one Prometheus text exposition (format 0.0.4, as the servers serve it).

    Raises ``ValueError`` if a line warmroute reads is not valid exposition syntax; lines
    of other metrics are never parsed, so their content does not matter.
    """
    samples = _samples(_known_lines(text))
    present = {name for name, _, _ in samples}
    families = _families_declared(text)
    server = next(
        (
            s.server
            for s in SERVERS
            if any(n in present for n, _ in s.running + s.waiting + s.kv_cache)
        ),
        None,
    )
    return ReplicaSignals(
        server=server,
        running=_count(samples, (x for s in SERVERS for x in s.running)),
        waiting=_count(samples, (x for s in SERVERS for x in s.waiting)),
        kv_cache_usage=_largest(samples, (x for s in SERVERS for x in s.kv_cache)),
        lora=_lora(samples, families),
    )


# A parsed sample: metric name, labels, value.
_Sample = tuple[str, Mapping[str, str], float]


def _metric_name(line: str) -> str:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
    return line.split("{", 1)[0].split(None, 1)[0] if line.strip() else ""


def _known_lines(text: str) -> str:
    """Only the lines of :data:`NAMES` (a vLLM exposition is ~50 KB; these are ~1 KB)."""
    return "".join(line + "\n" for line in text.splitlines() if _metric_name(line) in NAMES)


def _families_declared(text: str) -> frozenset[str]:
    """Names of :data:`NAMES` that have a ``# TYPE`` line, with or without samples."""
    return frozenset(
        name
        for line in text.splitlines()
        if line.startswith("# TYPE ") and (name := _metric_name(line)) in NAMES
    )


def _samples(text: str) -> list[_Sample]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if math.isfinite(s.value)
    ]


def _matching(samples: list[_Sample], series: Iterable[Series]) -> list[float]:
    wanted = list(series)
    return [
        value
        for name, labels, value in samples
        for want_name, want_labels in wanted
        if name == want_name and all(labels.get(k) == v for k, v in want_labels.items())
    ]


def _count(samples: list[_Sample], series: Iterable[Series]) -> int | None:
    values = _matching(samples, series)
    return round(sum(values)) if values else None


def _largest(samples: list[_Sample], series: Iterable[Series]) -> float | None:
    values = _matching(samples, series)
    return max(values) if values else None


def _names(label: str | None) -> frozenset[str]:
    """vLLM joins adapter names with ``,`` (the protocol doc's examples add a space)."""
    return frozenset(n.strip() for n in (label or "").split(",") if n.strip())


def _int(label: str | None) -> int | None:
    try:
        return int(label) if label is not None else None
    except ValueError:
        return None


def _lora(samples: list[_Sample], declared: frozenset[str]) -> LoraSignals | None:
    vllm = [(value, labels) for name, labels, value in samples if name == VLLM_LORA]
    if vllm:
        _, newest = max(vllm, key=lambda pair: pair[0])
        return LoraSignals(
            max_lora=_int(newest.get("max_lora")),
            running_adapters=_names(newest.get("running_lora_adapters")),
            waiting_adapters=_names(newest.get("waiting_lora_adapters")),
        )
    if VLLM_LORA in declared:
        # LoRA is on (vLLM declares the gauge only then) and no request has run yet.
        return LoraSignals(running_adapters=frozenset(), waiting_adapters=frozenset())
    # Per scheduler (data-parallel rank), each with its own pool: the largest is the
    # replica's per-batch figure.
    total = _largest(samples, [(SGLANG_LORA_TOTAL, _ANY)])
    used = _largest(samples, [(SGLANG_LORA_USED, _ANY)])
    if total is None and used is None:
        return None
    return LoraSignals(
        max_lora=None if total is None else round(total),
        slots_used=None if used is None else round(used),
    )
