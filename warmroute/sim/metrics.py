"""The simulated replica's ``GET /metrics``: vLLM's names, labels and text, plus ``sim_*``.

The ``vllm:*`` families are the ones routers read (the reference endpoint picker's
``docs/plugin-metric-protocol.md``), named, labelled and documented as vLLM 0.32 defines them
in ``vllm/v1/metrics/loggers.py`` and rendered by the same library (prometheus_client, a
private registry: the control plane's global one is not touched), so the text is what a
real vLLM's exposition looks like:

* ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``
  and ``vllm:num_requests_waiting_by_reason`` (``reason`` ``capacity``/``deferred``), each
  labelled ``engine="0"`` and ``model_name`` (the first served name);
* ``vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}`` when
  LoRA is on: a gauge whose *value is the Unix time* its label set was last current; every
  label set seen stays (newest = current), as vLLM's ``set_to_current_time`` leaves them.
  vLLM stamps the current set at every engine step, so while requests run or wait the
  current set is stamped with the scrape's time; once idle, it keeps the time it went idle.
  **Both adapter labels list the adapters with a running request**, in the order they
  started, as vLLM 0.32 does (recorded: ``tests/fixtures/vllm/lora/metrics_busy.txt``):
  its ``LoRARequestStates`` learns of a request from the request's first output (the queued
  and scheduled events arrive with it), and writes every adapter it tracks into both the
  waiting and the running dict, whose keys the labels join. A request waiting for its
  adapter shows only in ``vllm:num_requests_waiting`` (and ``_by_reason{reason="deferred"}``).

vLLM no longer exports ``vllm:gpu_cache_usage_perc`` (renamed ``kv_cache_usage_perc``), so
neither does the sim. The ``sim_*`` counters (labelled ``model_name``) are the sim's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from warmroute.sim.stats import SimStats

ENGINE = "0"
"""vLLM's ``engine`` label: the engine core's index (one engine: ``"0"``)."""


@dataclass(frozen=True, slots=True)
class LoraView:
    """What ``vllm:lora_requests_info`` and the waiting counts need from the LoRA book."""

    max_loras: int
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    waiting_requests: int


class LoraInfoHistory:
    """The label sets ``vllm:lora_requests_info`` has shown, each with the time it was last
    current. Not thread-safe; ``clock`` is wall time (the gauge's value is a timestamp)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str, str], float] = {}
        self._current: tuple[str, str, str] | None = None

    def update(self, view: LoraView) -> None:
        """The engine stepped (a request arrived, started or ended): ``view``'s label set is
        current from now on, stamped now."""
        running = ",".join(view.running)
        key = (str(view.max_loras), running, running)  # vLLM's labels: see the module doc
        self._current = key
        self._seen[key] = self._clock()

    def samples(self, busy: bool) -> list[tuple[tuple[str, str, str], float]]:
        """Every label set seen, ``(max_lora, running, waiting)``, with its time; the current
        one restamped now if ``busy`` (vLLM stamps it every engine step)."""
        if busy and self._current is not None:
            self._seen[self._current] = self._clock()
        return list(self._seen.items())


def render_metrics(
    model: str,
    stats: SimStats,
    lora: LoraView | None = None,
    lora_info: LoraInfoHistory | None = None,
) -> str:
    """Prometheus text format 0.0.4 of ``stats`` (and of ``lora`` if LoRA is on)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(model, stats, lora, lora_info))
    text: bytes = generate_latest(registry)
    return text.decode()


class _Collector:
    def __init__(
        self,
        model: str,
        stats: SimStats,
        lora: LoraView | None,
        lora_info: LoraInfoHistory | None,
    ) -> None:
        self._model, self._stats, self._lora, self._info = model, stats, lora, lora_info

    def collect(self) -> Iterator[Any]:
        s, labels = self._stats, [self._model, ENGINE]
        waiting = self._lora.waiting_requests if self._lora is not None else 0

        def gauge(name: str, doc: str, value: float) -> Any:
            family = GaugeMetricFamily(name, doc, labels=["model_name", "engine"])
            family.add_metric(labels, value)
            return family

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            s.in_flight - waiting,
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting
        )
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
            "budget, KV transfer, blocked status). Sum of all reasons equals "
            "vllm:num_requests_waiting.",
            labels=["model_name", "engine", "reason"],
        )
        by_reason.add_metric([*labels, "capacity"], 0)  # the sim never queues for capacity
        by_reason.add_metric([*labels, "deferred"], waiting)  # LoRA budget
        yield by_reason
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            s.in_flight / s.slots,
        )
        if self._lora is not None:
            info = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            history = self._info.samples(busy=s.in_flight > 0) if self._info else []
            for key, stamp in history:
                info.add_metric(list(key), stamp)
            yield info
        own = [
            ("sim_requests_received", "Inference requests received.", s.received),
            (
                "sim_requests_received_while_full",
                "Requests refused because every slot was taken.",
                s.received_while_full,
            ),
            (
                "sim_requests_received_while_loading",
                "Requests refused during the cold start.",
                s.received_while_loading,
            ),
            ("sim_requests_completed", "Requests served to the end.", s.completed),
            ("sim_requests_cancelled", "Requests whose client left first.", s.cancelled),
            ("sim_requests_failed", "Requests answered the failing status.", s.failed),
        ]
        for name, doc, value in own:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric([self._model], value)
            yield counter
        peak = GaugeMetricFamily(
            "sim_max_in_flight", "Most requests in flight at once.", labels=["model_name"]
        )
        peak.add_metric([self._model], s.max_in_flight)
        yield peak
