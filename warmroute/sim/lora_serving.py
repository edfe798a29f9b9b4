"""LoRA on the simulated replica's event loop: requests' tickets and the load endpoints.

:class:`LoraServing` wraps the pure :class:`LoraBook` for the replica: a request waits for
its adapter (woken when a finishing request makes room), its answer starts once the adapter
is loaded, and every change makes the current ``vllm:lora_requests_info`` label set.

vLLM's dynamic-LoRA endpoints, answered as vLLM 0.32 answers them: ``POST
/v1/load_lora_adapter {"lora_name", "lora_path", "load_inplace"?}`` and ``POST
/v1/unload_lora_adapter {"lora_name"}`` (vLLM's ``entrypoints/serve/lora/api_router.py``):

* off (LoRA off, or runtime updating not allowed: vLLM registers no route without
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): 404 ``{"detail": "Not Found"}``, FastAPI's answer;
* a body that is not JSON, not ``application/json``, or lacks a field or has one of the wrong
  type: 400 ``{"error": {"message": "1 validation error: ...", "type": "Bad Request",
  "param", "code": 400}}`` (vLLM's ``validation_exception_handler``);
* refused by the checks (:meth:`LoraBook.begin_load`, :meth:`LoraBook.unload`): their status
  and vLLM's message, e.g. 400 ``InvalidUserInput`` "has already been loaded", 404
  ``NotFoundError`` "cannot be found";
* a path that is not there (only with a path check, ``--lora-check-paths``): 404
  ``NotFoundError`` "Loading lora NAME failed: No adapter found for PATH";
* success: 200, ``text/plain`` ``Success: LoRA adapter 'NAME' added successfully.`` once the
  load time has passed (``... removed successfully.`` at once for unload).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from warmroute.sim.lora import LoraBook, LoraConfig, LoraError, Ticket
from warmroute.sim.metrics import LoraInfoHistory, LoraView
from warmroute.sim.sse import sleep_until

logger = logging.getLogger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


class LoraServing:
    """One replica's adapters, served on its event loop (not thread-safe).

    ``path_exists`` (None: every path exists) decides whether the load endpoint can load a
    ``lora_path``. A request's life: :meth:`check` its model, :meth:`request` a ticket once
    it holds a slot, ``await`` :meth:`ready`, and :meth:`finish` it when its slot is freed
    (always; twice is harmless).
    """

    def __init__(
        self, config: LoraConfig, base_model: str, path_exists: Callable[[str], bool] | None
    ) -> None:
        self.book = LoraBook(config, base_model, _loop_time)
        self.info = LoraInfoHistory()
        self._path_exists = path_exists
        self._wakeups: dict[int, asyncio.Future[None]] = {}
        self.waited = 0  # requests that had to wait for their adapter

    def check(self, model: str, served: Sequence[str]) -> str | None:
        """The adapter ``model`` names (None: a served model); :class:`LoraError` 404."""
        return self.book.check_model(model, served)

    def view(self) -> LoraView:
        """What the metrics show of the adapters now."""
        book = self.book
        running, waiting = book.running_adapters(), book.waiting_adapters()
        return LoraView(book.config.max_loras, running, waiting, book.waiting)

    def request(self, adapter: str) -> Ticket:
        """A request for known ``adapter`` holds a slot: its ticket, running or waiting."""
        ticket = self.book.request(adapter)
        if not ticket.started:
            self.waited += 1
            self._wakeups[ticket.id] = asyncio.get_running_loop().create_future()
        self._changed([])
        return ticket

    async def ready(self, ticket: Ticket) -> float:
        """Wait until ``ticket`` runs and its adapter is loaded; the loop time its answer
        starts from. Cancellation propagates (the caller's ``finish`` cleans up)."""
        if not ticket.started:
            await self._wakeups[ticket.id]
        await sleep_until(ticket.ready_at)
        return max(ticket.ready_at, asyncio.get_running_loop().time())

    def finish(self, ticket: Ticket) -> None:
        """``ticket``'s request is over (its slot freed); wakes the requests that start."""
        if ticket.finished:
            return
        self._wakeups.pop(ticket.id, None)
        self._changed(self.book.finish(ticket))

    def step(self) -> None:
        """A request without an adapter arrived or ended: vLLM's engine steps for it too,
        stamping the current ``vllm:lora_requests_info`` label set."""
        self.info.update(self.view())

    def _changed(self, started: list[Ticket]) -> None:
        for ticket in started:
            wakeup = self._wakeups.pop(ticket.id, None)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
        self.info.update(self.view())

    async def load(self, request: web.Request) -> web.Response:
        """``POST /v1/load_lora_adapter``."""
        if not self.book.config.runtime_updating:
            return route_not_found()
        return await _load_adapter(self.book, request, self._path_exists)

    async def unload(self, request: web.Request) -> web.Response:
        """``POST /v1/unload_lora_adapter``."""
        if not self.book.config.runtime_updating:
            return route_not_found()
        return await _unload_adapter(self.book, request)


def _loop_time() -> float:
    """The running loop's clock: loads are timed on it, like every sleep here."""
    return asyncio.get_running_loop().time()


def route_not_found() -> web.Response:
    """FastAPI's answer for a path with no route (the endpoints when they are off)."""
    return web.json_response({"detail": "Not Found"}, status=404)


async def _load_adapter(
    book: LoraBook, request: web.Request, path_exists: Callable[[str], bool] | None
) -> web.Response:
    """Register an adapter, answering once its load time has passed."""
    try:
        body = await _body(request, {"lora_name": str, "lora_path": str, "load_inplace": bool})
        name, path = body["lora_name"], body["lora_path"]
        ready_at = book.begin_load(name, path, inplace=bool(body.get("load_inplace")))
    except LoraError as exc:
        logger.info("sim LoRA load refused: %d %s", exc.status, exc)
        return web.json_response(exc.body(), status=exc.status)
    ok = False
    try:
        if path_exists is not None and not path_exists(path):
            missing = LoraError(
                404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
            )
            logger.info("sim LoRA load of %s failed: %s", name, missing)
            return web.json_response(missing.body(), status=missing.status)
        await sleep_until(ready_at)
        ok = True
    finally:
        book.end_load(name, path, ok=ok)
    logger.info("sim LoRA adapter %s loaded from %s", name, path)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def _unload_adapter(book: LoraBook, request: web.Request) -> web.Response:
    """Forget an adapter at once."""
    try:
        body = await _body(request, {"lora_name": str, "lora_int_id": int})
        book.unload(body["lora_name"])
    except LoraError as exc:
        logger.info("sim LoRA unload refused: %d %s", exc.status, exc)
        return web.json_response(exc.body(), status=exc.status)
    name = body["lora_name"]
    logger.info("sim LoRA adapter %s unloaded", name)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def _body(request: web.Request, fields: dict[str, type]) -> dict[str, Any]:
    """The JSON body checked as vLLM's pydantic models check it: the first of ``fields`` are
    required (the load's name and path, the unload's name), the rest optional; raises
    :class:`LoraError` 400 in the shape of vLLM's validation handler."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise _validation("Unsupported Media Type: Only 'application/json' is allowed", None)
    raw = await request.read()
    error: dict[str, object]
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        error = {"type": "json_invalid", "loc": "body", "msg": "JSON decode error", "input": {}}
        raise _validation(repr({**error, "ctx": {"error": str(exc)}}), "body") from exc
    if not isinstance(body, dict):
        error = {"type": "model_attributes_type", "loc": "body", "msg": "Input should be a "
                 "valid dictionary or object to extract fields from", "input": body}  # fmt: skip
        raise _validation(repr(error), "body")
    required = [n for n in fields if n in ("lora_name", "lora_path")]
    for name, kind in fields.items():
        value = body.get(name)
        loc = f"body.{name}"
        if value is None and name in required:
            error = {"type": "missing", "loc": loc, "msg": "Field required", "input": _brief(body)}
            raise _validation(repr(error), loc)
        if value is not None and type(value) is not kind:
            type_, what = _TYPES[kind]
            error = {"type": type_, "loc": loc, "msg": f"Input should be {what}"}
            raise _validation(repr({**error, "input": _brief(value)}), loc)
    return body


_TYPES = {
    str: ("string_type", "a valid string"),
    int: ("int_type", "a valid integer"),
    bool: ("bool_type", "a valid boolean"),
}
"""pydantic's error type and message for a field of each kind."""


def _brief(value: object) -> object:
    """vLLM's ``_summarize_error_input``: containers described, not rendered."""
    if isinstance(value, dict | list):
        return f"<{type(value).__name__} of {len(value)} items>"
    return value


def _validation(detail: str, param: str | None) -> LoraError:
    return LoraError(400, "Bad Request", f"1 validation error:\n  {detail}", param)
