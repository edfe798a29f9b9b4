"""Simulated GPU model server: the demo, test and benchmark backend.

Public surface: :class:`SimReplica` (fixed slots, no queue, a cold start), :class:`SimStats`
(its counters), :func:`render_metrics`, :class:`ServiceTime` and :func:`parse_service_time`
(how long a request without ``max_tokens`` holds a slot), :class:`TokenTiming` (how long one
with it does), :class:`ReceivedRequest` (what arrived). From the shell: ``warmroute sim --help``
(or ``python -m warmroute.sim``).

Endpoints (every response carries ``x-sim-replica: <host:port>``):

* ``GET /health``: 503 ``{"status": "loading"}`` until ``load_seconds`` after start, 503
  ``{"status": "unhealthy"}`` while toggled off, else 200 ``{"status": "ok"}``.
* ``POST /v1/completions``, ``/v1/chat/completions``, ``/v1/embeddings``: the OpenAI API
  (``openai_api``; lenient: absent fields take defaults, an empty body is ``{}``);
  ``/v1/responses``: OpenAI's Responses API (``responses_api``); ``/v1/messages``:
  Anthropic's Messages API (``anthropic_api``; its errors in Anthropic's shape). 503
  ``{"error": "loading"}`` or ``{"error": "replica full"}`` at once; otherwise a slot is held
  while the response is generated: ``ttft_ms + max_tokens * per_token_ms`` when the body sets
  ``max_tokens`` (or ``max_completion_tokens``; ``max_output_tokens`` on the Responses
  path), else a sample of the service-time
  distribution (16 tokens). The body's ``model`` is echoed (default: the first served model);
  ``"stream": true`` answers SSE ``chat.completion.chunk`` / ``text_completion`` chunks, one
  per token as it is due, a usage chunk if ``stream_options.include_usage``, then ``data:
  [DONE]``; on the Responses and Messages paths, those APIs' named events in their order.
  Non-streamed answers add ``replica``, ``request_id`` (``x-request-id``) and ``service_ms``
  to the API's fields. A body that is not a JSON object, or a known field of the
  wrong type, is answered 400 ``{"error": {"message", "type": "invalid_request_error",
  "param", "code"}}`` and not counted.
* ``GET /v1/models``: the served models, then the LoRA adapters (``parent``: the first
  model), as vLLM's model cards; takes no slot, not counted.
* With LoRA (``SimReplica(lora=...)``, ``--enable-lora``; ``lora``, ``lora_serving``): a
  request must name a served model or a known adapter (else 404, vLLM's body); at most
  ``max_loras`` adapters run at once, requests for another wait holding their slot; an
  adapter not loaded costs its load time first. ``POST /v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` answer as vLLM's when runtime updating is allowed, else 404.
* Any other ``POST``/``GET /v1/...``: inference as before the OpenAI API, answered 200 JSON
  ``{"replica", "model", "request_id", "service_ms"}`` after a sampled service time.
* ``GET /metrics``: Prometheus text (``metrics``): ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting`` (requests waiting for their adapter, else 0),
  ``vllm:num_requests_waiting_by_reason``, ``vllm:kv_cache_usage_perc`` (in_flight/slots),
  each labelled ``engine`` and ``model_name`` as vLLM's; with LoRA
  ``vllm:lora_requests_info``; and ``sim_*`` counters.
* ``GET /stats``: the :class:`SimStats` fields as JSON (with LoRA, also ``lora``: the known,
  resident, running and waiting adapters).
* ``GET /received``: ``{"requests": [...]}``, the last 64 requests under ``/v1/`` (method, path,
  headers with credentials redacted, body length and SHA-256, the body itself up to 64 KiB).
* ``POST /admin/fail`` with ``{"status": 500}`` (500..599): answer every inference request
  with that status at once (``{"error": "replica failing"}``, no slot) while ``/health``
  stays as it is; ``{"status": null}`` heals it. ``--fail-status`` starts it so.
* ``POST /admin/health`` with ``{"healthy": false|true}``; ``POST /admin/reset`` zeroes the
  counters except ``in_flight``, forgets the received requests, and returns the stats.

Test headers on inference requests, overriding the above (a malformed one is answered 400 and
not counted):

* ``x-sim-service-ms``: service time in ms instead of the planned one (tokens spread evenly);
* ``x-sim-status``: answer this status (200..599) after the service time, JSON body
  ``{"replica", "model", "request_id", "service_ms", "error"}``;
* ``x-sim-stream-chunks: N``: answer ``text/event-stream`` with exactly N ``data:`` events spread
  over the service time, then ``data: [DONE]`` (ignored when ``x-sim-status`` is not 200). On
  the OpenAI paths they are N chunks of N tokens, the role in the first and ``finish_reason`` in
  the last; elsewhere ``{"replica", "model", "request_id", "index", "text"}``.
"""

from warmroute.sim.metrics import render_metrics
from warmroute.sim.received import ReceivedRequest
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime, TokenTiming, parse_service_time
from warmroute.sim.stats import SimStats

__all__ = [
    "ReceivedRequest",
    "ServiceTime",
    "SimReplica",
    "SimStats",
    "TokenTiming",
    "parse_service_time",
    "render_metrics",
]
