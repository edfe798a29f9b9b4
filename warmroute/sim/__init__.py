"""Simulated GPU model server: the demo, test and benchmark backend.

Public surface: :class:`SimReplica` (fixed slots, no queue, a cold start), :class:`SimStats`
(its counters), :func:`render_metrics`, :class:`ServiceTime` and :func:`parse_service_time`
(how long a request holds a slot). From the shell: ``python -m warmroute.sim --help``.

Endpoints (every response carries ``x-sim-replica: <host:port>``):

* ``GET /health``: 503 ``{"status": "loading"}`` until ``load_seconds`` after start, 503
  ``{"status": "unhealthy"}`` while toggled off, else 200 ``{"status": "ok"}``.
* ``POST``/``GET /v1/...``: inference. 503 ``{"error": "loading"}`` or ``{"error": "replica
  full"}`` at once; otherwise a slot is held for the service time, then 200 JSON
  ``{"replica", "model", "request_id", "service_ms"}`` (``request_id`` is ``x-request-id``).
* ``GET /metrics``: Prometheus text, ``vllm:num_requests_running``, ``vllm:num_requests_waiting``
  (always 0), ``vllm:gpu_cache_usage_perc`` (in_flight/slots) and ``sim_*`` counters.
* ``GET /stats``: the :class:`SimStats` fields as JSON.
* ``POST /admin/health`` with ``{"healthy": false|true}``; ``POST /admin/reset`` zeroes the
  counters except ``in_flight`` and returns the stats.

Inference request headers (a malformed one is answered 400 and not counted):

* ``x-sim-service-ms``: service time in ms instead of a sample from the distribution;
* ``x-sim-status``: answer this status (200..599) after the service time, JSON body;
* ``x-sim-stream-chunks: N``: answer ``text/event-stream`` with N ``data: {...}`` events spread
  over the service time, then ``data: [DONE]`` (ignored when ``x-sim-status`` is not 200).
"""

from warmroute.sim.replica import SimReplica, SimStats, render_metrics
from warmroute.sim.service_time import ServiceTime, parse_service_time

__all__ = ["ServiceTime", "SimReplica", "SimStats", "parse_service_time", "render_metrics"]
