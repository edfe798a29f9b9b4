"""A simulated GPU model server: fixed slots, no queue, a cold start, vLLM's metrics, LoRA.

Accounting contract, which tests rely on to prove the router never overloads a replica (all
state lives on one event loop, so no locking): an inference request with valid ``x-sim-*``
headers counts in ``received``, then in exactly one of ``received_while_loading`` and
``received_while_full`` (both answered 503 at once), or takes a slot. A slot is released exactly
once, as ``completed`` (service time ran out, whatever status is simulated) or ``cancelled``
(client gone first), and *before* the final bytes are written, so a router that frees its lease
when the client has the last byte never finds the replica still busy. A replica set to fail
(``set_failing``) answers every such request with that status at once, without a slot, and
counts it in ``failed``. So between resets: ``received == received_while_loading +
received_while_full + received_over_tokens + failed + completed + cancelled + in_flight``.
With a token budget (``set_token_budget``) a request that would take
the tokens in flight over it is refused (503, ``received_over_tokens``), as one over the slots
is; its cost is priced as warmroute's ``tokens:`` pools price it (body bytes per token, plus
``max_completion_tokens``/``max_tokens`` or a default).
The API paths (``apis.PATHS``: OpenAI's Completions, Chat, Embeddings and Responses,
Anthropic's Messages) follow the same contract; a body they refuse is answered 400 and not
counted, like a malformed header, and ``GET /v1/models`` takes no slot and is not counted.
With LoRA (``lora_serving``), a request naming neither a served model nor a known adapter is
answered 404 and not counted (``unknown_model``); a request for an adapter that cannot join
the running batch yet waits *holding its slot* (it is inside the server, as in vLLM), so
``in_flight`` is running plus waiting, as ``vllm:num_requests_running`` plus ``_waiting``.
Every request under ``/v1/`` is recorded first (``received.RequestLog``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from warmroute.sim import apis, openai_api
from warmroute.sim.lora import LoraBook, LoraConfig, LoraError
from warmroute.sim.lora_serving import LOAD_PATH, UNLOAD_PATH, LoraServing, route_not_found
from warmroute.sim.metrics import render_metrics
from warmroute.sim.openai_api import ApiRequest, InvalidRequest
from warmroute.sim.prefix_cache import PrefixCache
from warmroute.sim.received import ReceivedRequest, RequestLog
from warmroute.sim.service_time import Generation, ServiceTime, TokenTiming, plan_generation
from warmroute.sim.sse import LegacyEvents, sleep_until, stream
from warmroute.sim.stats import SimStats, Slot

logger = logging.getLogger(__name__)

_SHUTDOWN_GRACE = 0.25  # stop() gives in-flight requests 2x this (aiohttp waits twice)
MAX_BODY_BYTES = 256 * 1024 * 1024  # larger request bodies are refused with 413 (aiohttp: 1 MiB)


def _header(
    headers: Mapping[str, str], name: str, parse: Callable[[str], float], low: float, high: float
) -> float | None:
    """Header ``name`` parsed, or None if absent; a client-facing ValueError unless finite and
    within ``[low, high]``."""
    if (raw := headers.get(name)) is None:
        return None
    try:
        value = parse(raw)
    except ValueError:
        value = math.nan  # fails the check below
    if not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if parse is int else "a number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {raw!r}")
    return value


class SimReplica:
    """One simulated model server with ``slots`` concurrent requests and no queue.

    Not thread-safe: build, start, query and stop it on one event loop. Counters survive
    ``stop()``/``start()`` (a restart re-enters the loading phase); :meth:`reset` zeroes them.
    Endpoints and ``x-sim-*`` request headers are listed in the package docstring.
    """

    def __init__(
        self,
        slots: int,
        load_seconds: float,
        service: ServiceTime,
        seed: int | None,
        model: str | Sequence[str] = "sim-model",
        timing: TokenTiming | None = None,
        prefix_cache: PrefixCache | None = None,
        lora: LoraConfig | None = None,
        lora_path_exists: Callable[[str], bool] | None = None,
    ) -> None:
        """``model``: the served model name(s), the first is the default and the metrics label.
        ``service`` times requests without ``max_tokens``; ``timing`` those with it.
        ``prefix_cache``: requests whose prompt starts like a recent one run faster
        (``warmroute.sim.prefix_cache``); None: every request takes its full time.
        ``lora``: serve LoRA adapters on the first model as vLLM does (``warmroute.sim.lora``;
        then a request must name a served model or a known adapter, else 404); None: no
        adapters, and any model name is served. ``lora_path_exists`` decides which paths
        the load endpoint can load (None: all).

        Raises :class:`ValueError` unless ``slots >= 1``, ``load_seconds >= 0`` and there is
        at least one non-empty model name.
        """
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not 0 <= load_seconds < math.inf:
            raise ValueError(f"load_seconds must be a finite number >= 0, got {load_seconds}")
        models = (model,) if isinstance(model, str) else tuple(model)
        if not models or not all(models):
            raise ValueError(f"model needs at least one non-empty name, got {model!r}")
        self._load_seconds, self._service, self._models = load_seconds, service, models
        self._model = models[0]
        self._timing = timing if timing is not None else TokenTiming()
        self._prefix = prefix_cache
        self._rng = random.Random(seed)
        self._log = RequestLog()
        self._started_at = int(time.time())
        self._stats = SimStats(slots=slots)
        self._address = "unstarted"
        self._runner: web.AppRunner | None = None
        self._warm_timer: asyncio.TimerHandle | None = None
        self._chars_per_token = 4.0
        self._default_max_tokens = 1024
        self._lora = None if lora is None else LoraServing(lora, self._model, lora_path_exists)
        # Headers of the latest counted inference request, names lower-cased as Envoy sends
        # them, repeats joined by ", ". Replaced, never mutated: treat it as read-only.
        self.last_headers: dict[str, str] = {}

    @property
    def address(self) -> str:
        """``host:port`` as bound by :meth:`start`; the value of ``x-sim-replica``."""
        return self._address

    @property
    def models(self) -> tuple[str, ...]:
        """The served model names, as ``GET /v1/models`` lists them."""
        return self._models

    def stats(self) -> SimStats:
        """A copy of the counters; ``warm`` turns True ``load_seconds`` after :meth:`start`."""
        if self._lora is not None:
            self._stats.lora_loads = self._lora.book.loads
            self._stats.lora_waited = self._lora.waited
        return dataclasses.replace(self._stats)

    @property
    def lora(self) -> LoraBook | None:
        """The adapters' state (None without LoRA): read it, do not change it."""
        return None if self._lora is None else self._lora.book

    def received(self) -> tuple[ReceivedRequest, ...]:
        """The last requests under ``/v1/`` (at most 64), oldest first, as ``GET /received``."""
        return self._log.entries()

    def set_token_budget(
        self, budget: int | None, *, chars_per_token: float = 4.0, default_max_tokens: int = 1024
    ) -> None:
        """Refuse (503, ``received_over_tokens``) a request that would take the tokens in
        flight over ``budget`` (None: no budget), each priced ``ceil(body bytes /
        chars_per_token)`` plus its max tokens (``default_max_tokens`` if it names none)."""
        self._stats.token_budget = budget
        self._chars_per_token = chars_per_token
        self._default_max_tokens = default_max_tokens

    def set_healthy(self, healthy: bool) -> None:
        """Force ``GET /health`` to 503 (``False``) or back to normal; inference is unaffected."""
        self._stats.healthy = healthy
        logger.info("sim replica %s healthy=%s", self._address, healthy)

    def set_failing(self, status: int | None) -> None:
        """Answer every inference request with ``status`` (500..599) at once, taking no
        slot, while ``/health`` stays as it is: a broken model server whose probe is
        green (DESIGN.md fact 12). None: serve normally again."""
        if status is not None and not 500 <= status <= 599:
            raise ValueError(f"fail status must be in 500..599, got {status}")
        self._stats.fail_status = status
        logger.info("sim replica %s failing=%s", self._address, status)

    def reset(self) -> None:
        """Zero every counter but ``in_flight`` (``max_in_flight`` restarts from it) and forget
        ``last_headers``, :meth:`received` and the prefix cache. In place, so slots held
        across a reset are released into it."""
        s = self._stats
        s.received = s.received_while_full = s.received_while_loading = 0
        s.completed = s.cancelled = s.received_over_tokens = s.failed = 0
        s.unknown_model = 0
        if self._lora is not None:
            self._lora.book.loads = self._lora.waited = 0
        s.max_tokens_in_flight = s.tokens_in_flight
        s.prefix_hits = s.prefix_blocks = s.prefix_blocks_hit = 0
        if self._prefix is not None:
            self._prefix.clear()
        s.max_in_flight = s.in_flight
        self.last_headers = {}
        self._log.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen (``port=0`` picks a free port), return the bound port; warm in ``load_seconds``.

        Raises :class:`RuntimeError` if already started and :class:`OSError` if the bind fails.
        """
        if self._runner is not None:
            raise RuntimeError(f"sim replica {self._address} is already started")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(self._tag_response)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats_json)
        app.router.add_get("/received", self._received_json)
        app.router.add_post("/admin/health", self._admin_health)
        app.router.add_post("/admin/fail", self._admin_fail)
        app.router.add_post("/admin/reset", self._admin_reset)
        app.router.add_get("/v1/models", self._list_models, allow_head=False)
        app.router.add_post(LOAD_PATH, self._load_adapter)
        app.router.add_post(UNLOAD_PATH, self._unload_adapter)
        app.router.add_post("/v1/{tail:.*}", self._inference)
        app.router.add_get("/v1/{tail:.*}", self._inference, allow_head=False)
        # handler_cancellation: a client (Envoy) dropping the connection cancels the handler,
        # as vLLM aborts on disconnect, so the slot is freed at once.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._started_at = int(time.time())
        bound: int = runner.addresses[0][1]
        self._address = f"{host}:{bound}"
        logger.info("sim replica %s listening: %s %s", self._address, self._model, self._stats)
        # Even a zero delay fires before the first request can have been parsed.
        loop = asyncio.get_running_loop()
        self._warm_timer = loop.call_later(self._load_seconds, self._become_warm)
        return bound

    async def stop(self) -> None:
        """Stop listening; in-flight requests get ~0.5 s, then are cancelled (and counted
        ``cancelled``). Safe to call twice or before :meth:`start`."""
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None
        runner, self._runner = self._runner, None
        self._stats.warm = False
        if runner is not None:
            await runner.cleanup()
            logger.info("sim replica %s stopped", self._address)

    def _become_warm(self) -> None:
        self._warm_timer = None
        self._stats.warm = True
        logger.info("sim replica %s warm after %gs", self._address, self._load_seconds)

    async def _tag_response(self, _: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-sim-replica"] = self._address

    async def _health(self, _: web.Request) -> web.Response:
        s = self._stats
        state = "loading" if not s.warm else "ok" if s.healthy else "unhealthy"
        return web.json_response({"status": state}, status=200 if state == "ok" else 503)

    async def _stats_json(self, _: web.Request) -> web.Response:
        body: dict[str, Any] = dataclasses.asdict(self.stats())
        if (book := self.lora) is not None:
            body["lora"] = {
                "known": book.known(),
                "resident": list(book.resident()),
                "running": list(book.running_adapters()),
                "waiting": list(book.waiting_adapters()),
            }
        return web.json_response(body)

    async def _received_json(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": [r.to_json() for r in self._log.entries()]})

    async def _list_models(self, request: web.Request) -> web.Response:
        self._record(request, b"")
        created = self._started_at
        cards = self._lora.book.model_cards(created) if self._lora is not None else []
        return web.json_response(openai_api.models(self._models, created, cards))

    async def _load_adapter(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return route_not_found() if self._lora is None else await self._lora.load(request)

    async def _unload_adapter(self, request: web.Request) -> web.Response:
        self._record(request, await request.read())
        return route_not_found() if self._lora is None else await self._lora.unload(request)

    def _record(self, request: web.Request, body: bytes) -> dict[str, str]:
        """Log the request; its headers, names lower-cased as Envoy sends them, repeats joined."""
        headers = {k.lower(): ", ".join(request.headers.getall(k)) for k in request.headers}
        self._log.record(request.method, request.path, headers, body)
        return headers

    async def _metrics(self, _: web.Request) -> web.Response:
        lora = self._lora
        view, info = (None, None) if lora is None else (lora.view(), lora.info)
        text = render_metrics(self._model, self._stats, view, info)
        content_type = "text/plain; version=0.0.4; charset=utf-8"
        return web.Response(body=text.encode(), headers={"Content-Type": content_type})

    async def _admin_health(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("healthy"), bool):
            return web.json_response({"error": 'expected {"healthy": true|false}'}, status=400)
        self.set_healthy(body["healthy"])
        return web.json_response({"healthy": self._stats.healthy})

    async def _admin_fail(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        status = body.get("status", 0) if isinstance(body, dict) else 0
        if status is not None and (type(status) is not int or not 500 <= status <= 599):
            return web.json_response({"error": 'expected {"status": 500..599 | null}'}, status=400)
        self.set_failing(status)
        return web.json_response({"fail_status": self._stats.fail_status})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return await self._stats_json(request)

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # a real server parses the prompt before admitting it
        headers = self._record(request, body)
        rid = headers.get("x-request-id")
        try:
            ms = _header(headers, "x-sim-service-ms", float, 0, math.inf)
            status = int(_header(headers, "x-sim-status", int, 200, 599) or 200)  # absent: 200
            chunks = _header(headers, "x-sim-stream-chunks", int, 0, math.inf)
        except ValueError as exc:
            logger.warning("sim replica %s request %s: %s", self._address, rid, exc)
            return web.json_response({"error": str(exc)}, status=400)
        api: ApiRequest | None = None
        adapter: str | None = None
        if request.method == "POST":
            try:
                api = apis.parse(request.path, body, self._model)
            except InvalidRequest as exc:
                logger.info("sim replica %s request %s: 400 %s", self._address, rid, exc)
                return web.json_response(apis.invalid_body(request.path, exc), status=400)
        if api is not None and self._lora is not None:
            try:
                adapter = self._lora.check(api.model, self._models)
            except LoraError as exc:
                self._stats.unknown_model += 1
                logger.info("sim replica %s request %s: 404 %s", self._address, rid, exc)
                answer = apis.error_body(request.path, exc.message, exc.type, exc.status, exc.param)
                return web.json_response(answer, status=exc.status)
        stats = self._stats
        stats.received += 1
        self.last_headers = headers
        if not stats.warm:
            stats.received_while_loading += 1
            logger.debug("sim replica %s request %s: refused, loading", self._address, rid)
            return web.json_response({"error": "loading"}, status=503)
        if (failing := stats.fail_status) is not None:
            stats.failed += 1
            logger.debug("sim replica %s request %s: failing, %d", self._address, rid, failing)
            return web.json_response({"error": "replica failing"}, status=failing)
        if stats.in_flight >= stats.slots:
            stats.received_while_full += 1
            logger.debug("sim replica %s request %s: refused, full", self._address, rid)
            return web.json_response({"error": "replica full"}, status=503)
        cost = 0
        if stats.token_budget is not None:
            wanted = api.max_tokens if api is not None else None
            cost = math.ceil(len(body) / self._chars_per_token) + (
                self._default_max_tokens if wanted is None else wanted
            )
            if stats.tokens_in_flight + cost > stats.token_budget:
                stats.received_over_tokens += 1
                logger.debug("sim replica %s request %s: refused, tokens", self._address, rid)
                return web.json_response({"error": "replica out of tokens"}, status=503)
        slot = Slot(stats, cost)
        lora = self._lora
        ticket = lora.request(adapter) if lora is not None and adapter is not None else None
        try:
            if lora is not None and ticket is not None:
                admitted = await lora.ready(ticket)
            else:
                admitted = asyncio.get_running_loop().time()
                if lora is not None:
                    lora.step()

            def done() -> None:
                slot.release(completed=True)
                if lora is not None and ticket is not None:
                    lora.finish(ticket)
                elif lora is not None:
                    lora.step()

            gen = plan_generation(
                self._service,
                self._timing,
                self._rng,
                max_tokens=api.max_tokens if api else None,
                tokens=None if chunks is None else int(chunks),
                service_ms=ms,
            )
            if self._prefix is not None:
                gen = self._prefix_served(body, gen)
            logger.debug(
                "sim replica %s request %s: %.1f ms, %d tokens",
                self._address, rid, gen.service_s * 1e3, gen.tokens,
            )  # fmt: skip
            info = {"replica": self._address, "model": self._model, "request_id": rid}
            extra = {"replica": self._address, "request_id": rid, "service_ms": gen.service_s * 1e3}
            if status != 200 or (api is None and chunks is None):
                await sleep_until(admitted + gen.service_s)
                done()
                result: dict[str, Any] = {**info, "service_ms": gen.service_s * 1000}
                if status >= 400:
                    result["error"] = f"simulated status {status}"
                return web.json_response(result, status=status)
            if api is None:
                return await stream(request, gen, LegacyEvents(info), admitted, done)
            limited = api.max_tokens is not None and gen.tokens >= api.max_tokens
            if api.kind != "embedding" and (api.stream or chunks is not None):
                events = apis.events(api, gen.tokens, limited, framed=chunks is None)
                return await stream(request, gen, events, admitted, done)
            await sleep_until(admitted + gen.service_s)
            done()
            return web.json_response({**apis.answer(api, gen.tokens, limited), **extra})
        finally:
            if slot.release(completed=False):
                logger.debug("sim replica %s request %s: cancelled", self._address, rid)
            if lora is not None and ticket is not None:
                lora.finish(ticket)  # a second call is harmless

    def _prefix_served(self, body: bytes, gen: Generation) -> Generation:
        """Count the request's prefix hit and shorten its generation by it."""
        assert self._prefix is not None
        found = self._prefix.serve(body)
        stats = self._stats
        stats.prefix_blocks += found.blocks
        stats.prefix_blocks_hit += found.hit
        if found.hit:
            stats.prefix_hits += 1
        f = found.factor(self._prefix.speedup)
        if f == 1.0:
            return gen
        return Generation(gen.service_s * f, gen.tokens, gen.first_s * f, gen.step_s * f)
