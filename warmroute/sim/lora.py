"""LoRA adapters on the simulated replica, as vLLM (0.32) serves them: pure state, no I/O.

What is imitated, and where in vLLM it comes from:

* **Known adapters** (``--lora-modules`` at start, ``POST /v1/load_lora_adapter`` later) are
  the names a request may use and ``GET /v1/models`` lists, each with ``parent`` (the base
  model) and ``root`` (its path): vLLM's ``OpenAIServingModels.lora_requests``. A request
  naming neither a base model nor a known adapter is refused 404 (``_check_model``).
* **Resident adapters**: loading reads an adapter into an LRU cache of ``max_cpu_loras``
  (default ``max_loras``) adapters, taking ``load_s``. Registering loads it (vLLM's
  ``add_lora``: the load endpoint answers once it is loaded); a request whose known adapter
  was evicted pays the load again when it starts (vLLM's ``LRUCacheWorkerLoRAManager``).
  The least recently used adapter no request is running on is evicted; if every resident
  adapter is running, the cache is over capacity until one is idle (vLLM, too, exceeds
  ``max_cpu_loras`` "very temporarily").
* **``max_loras`` running at once**: a request whose adapter would make the running batch
  hold more than ``max_loras`` distinct adapters waits; waiting requests start in arrival
  order as soon as their adapter fits, skipping those that still do not (vLLM's scheduler:
  "Scheduling would exceed max_loras, skip"). A running request is never preempted.

Simplifications, stated: a load delays only the requests of that adapter (vLLM loads inside
an engine step, so the whole batch stalls); a second load of a name already loading is
refused at once (vLLM serialises them by name, then refuses the second as already loaded);
unloading also drops the adapter from the cache when nothing runs on it (vLLM leaves the
dead copy there until the LRU evicts it). Times are on the injected clock (the replica uses
its event loop's).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from warmroute.sim.openai_api import model_card


@dataclass(frozen=True, slots=True)
class LoraModule:
    """One adapter to serve from the start: vLLM's ``--lora-modules name=path``."""

    name: str
    path: str


@dataclass(frozen=True, slots=True)
class LoraConfig:
    """The replica's LoRA settings, named like vLLM's options.

    ``max_loras``: distinct adapters in the running batch (vLLM ``--max-loras``, default 1);
    ``max_cpu_loras``: adapters kept loaded (``--max-cpu-loras``, default ``max_loras``);
    ``load_s``: how long loading one adapter takes; ``modules``: known and loaded from the
    start (the last ``max_cpu_loras`` of them stay resident); ``runtime_updating``: the
    load/unload endpoints answer (vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), else 404.
    """

    max_loras: int = 1
    max_cpu_loras: int | None = None
    load_s: float = 0.1
    modules: tuple[LoraModule, ...] = ()
    runtime_updating: bool = False

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {self.max_loras}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            # vLLM's LoRAConfig refuses this too.
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if not 0 <= self.load_s < float("inf"):
            raise ValueError(f"load time must be a finite number >= 0, got {self.load_s}")
        names = [m.name for m in self.modules]
        if not all(names) or not all(m.path for m in self.modules):
            raise ValueError("every LoRA module needs a name and a path")
        if len(set(names)) != len(names):
            raise ValueError(f"LoRA module names repeat: {names}")

    @property
    def capacity(self) -> int:
        """Adapters kept loaded at once (``max_cpu_loras``, else ``max_loras``)."""
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras


class LoraError(Exception):
    """A refusal in vLLM's shape: HTTP ``status``, its error ``type``, ``message``, ``param``."""

    def __init__(self, status: int, type_: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param = status, type_, param

    @property
    def message(self) -> str:
        """The message as vLLM sends it: file paths replaced by ``<path>``."""
        return sanitize_message(str(self))

    def body(self) -> dict[str, Any]:
        """vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``."""
        error = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.status,
        }
        return {"error": error}


def sanitize_message(message: str) -> str:
    """vLLM's ``sanitize_message`` (``entrypoints/serve/exception_handling/utils.py``), its
    path rules: every error message it sends has absolute paths replaced by ``<path>``."""
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def parse_module(text: str) -> LoraModule:
    """One of vLLM's ``--lora-modules`` forms: ``name=path`` or ``{"name": ..., "path":
    ...}``; ValueError if the name or the path is missing or empty."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"invalid JSON LoRA module {text!r}: {exc}") from exc
        name, path = (doc.get("name"), doc.get("path")) if isinstance(doc, dict) else (0, 0)
        if isinstance(name, str) and isinstance(path, str) and name and path:
            return LoraModule(name, path)
        raise ValueError(f'expected {{"name": ..., "path": ...}}, got {text!r}')
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected name=path, got {text!r}")
    return LoraModule(name, path)


@dataclass(slots=True)
class Ticket:
    """One request for an adapter: ``started`` once it runs, generating from ``ready_at``
    (after the adapter's load, if it had to be loaded). Owned by :class:`LoraBook`; the
    caller reads it and hands it back to :meth:`LoraBook.finish`."""

    adapter: str
    id: int
    started: bool = False
    ready_at: float = 0.0
    finished: bool = False


class LoraBook:
    """Known, resident, running and waiting adapters of one replica.

    Not thread-safe; every method is synchronous and O(adapters + waiting). Wake-ups are
    the caller's: :meth:`request` and :meth:`finish` return the tickets that started.
    """

    def __init__(self, config: LoraConfig, base_model: str, clock: Callable[[], float]) -> None:
        self.config, self._base, self._clock = config, base_model, clock
        self._known: dict[str, str] = {}  # name -> path, in registration order
        self._resident: OrderedDict[str, float] = OrderedDict()  # name -> ready_at; LRU first
        self._loading: set[str] = set()  # names whose load endpoint call is under way
        # Adapter -> requests running on it, in the order each got its first running request
        # (vLLM's LoRARequestStates: an entry appears when a request's first output does).
        self._running: dict[str, int] = {}
        self._waiting: deque[Ticket] = deque()
        self._ids = itertools.count(1)
        # Adapter loads (registrations, re-loads on use), for stats; the start's modules
        # are loaded during the cold start and not counted.
        self.loads = 0
        for module in config.modules:
            self._known[module.name] = module.path
            self._make_resident(module.name, ready_at=-math.inf)

    # -- what is served -----------------------------------------------------------------

    def known(self) -> dict[str, str]:
        """A copy of name -> path of every adapter a request may name, oldest first."""
        return dict(self._known)

    def resident(self) -> tuple[str, ...]:
        """Loaded adapters, least recently used first."""
        return tuple(self._resident)

    def running_adapters(self) -> tuple[str, ...]:
        """Adapters with a running request, in vLLM's order (the first to run first)."""
        return tuple(self._running)

    def waiting_adapters(self) -> tuple[str, ...]:
        """Adapters with a waiting request, in arrival order."""
        return tuple(dict.fromkeys(t.adapter for t in self._waiting))

    @property
    def waiting(self) -> int:
        """Requests waiting for their adapter to fit into the running batch."""
        return len(self._waiting)

    def check_model(self, model: str, base_models: Sequence[str]) -> str | None:
        """The adapter ``model`` names, None for a base model; :class:`LoraError` 404 with
        vLLM's message (``_check_model``) for anything else."""
        if model in base_models:
            return None
        if model in self._known:
            return model
        raise LoraError(
            404,
            "NotFoundError",
            f"The model `{model}` does not exist. Valid aliases: {', '.join(base_models)}.",
            "model",
        )

    # -- requests -------------------------------------------------------------------------

    def request(self, adapter: str) -> Ticket:
        """A request for known ``adapter`` arrives: it starts now if the adapter fits into the
        running batch and nobody waits ahead of it for the same reason, else it waits."""
        ticket = Ticket(adapter, next(self._ids))
        self._waiting.append(ticket)
        self._schedule()
        return ticket

    def finish(self, ticket: Ticket) -> list[Ticket]:
        """``ticket`` is done (completed or cancelled, running or still waiting); safe to call
        twice. Returns the waiting tickets that started because of it."""
        if ticket.finished:
            return []
        ticket.finished = True
        if ticket.started:
            self._running[ticket.adapter] -= 1
            if not self._running[ticket.adapter]:
                del self._running[ticket.adapter]
        else:
            self._waiting.remove(ticket)
        self._trim()
        return self._schedule()

    def _schedule(self) -> list[Ticket]:
        """Start every waiting ticket that fits, in arrival order (vLLM skips, not blocks)."""
        started: list[Ticket] = []
        for ticket in list(self._waiting):
            running = self.running_adapters()
            if ticket.adapter not in running and len(running) >= self.config.max_loras:
                continue
            self._waiting.remove(ticket)
            self._running[ticket.adapter] = self._running.get(ticket.adapter, 0) + 1
            ticket.started = True
            ticket.ready_at = self._use(ticket.adapter)
            started.append(ticket)
        return started

    def _use(self, adapter: str) -> float:
        """Touch ``adapter`` in the cache (loading it if absent); when it is ready."""
        now = self._clock()
        if adapter in self._resident:
            self._resident.move_to_end(adapter)
            return max(now, self._resident[adapter])
        self.loads += 1
        return self._make_resident(adapter, ready_at=now + self.config.load_s)

    def _make_resident(self, adapter: str, ready_at: float) -> float:
        self._resident[adapter] = ready_at
        self._resident.move_to_end(adapter)
        self._trim(keep=adapter)
        return ready_at

    def _trim(self, keep: str | None = None) -> None:
        """Evict least recently used idle adapters (not ``keep``, not one being loaded by
        the endpoint) while over capacity."""
        busy = {*self._running, *self._loading, keep}
        over = len(self._resident) - self.config.capacity
        for name in [n for n in self._resident if n not in busy][: max(over, 0)]:
            del self._resident[name]

    # -- the load / unload endpoints --------------------------------------------------------

    def begin_load(self, name: object, path: object, inplace: bool = False) -> float:
        """Start registering adapter ``name`` from ``path``; returns when the load is done
        (the endpoint answers then and calls :meth:`end_load`). :class:`LoraError` with
        vLLM's status and message (``_check_load_lora_adapter_request``) if refused;
        ``missing`` paths are left to the caller (vLLM's 404 "No adapter found")."""
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise LoraError(
                400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
            )
        if name == self._base:
            raise LoraError(
                400,
                "InvalidUserInput",
                f"The lora adapter '{name}' conflicts with a served base model.",
            )
        if (not inplace and name in self._known) or name in self._loading:
            raise LoraError(
                400,
                "InvalidUserInput",
                f"The lora adapter '{name}' has already been loaded. If you want to load "
                "the adapter in place, set 'load_inplace' to True.",
            )
        self.loads += 1
        self._resident.pop(name, None)  # in place: the new weights replace the old
        ready_at = self._make_resident(name, ready_at=self._clock() + self.config.load_s)
        self._loading.add(name)
        return ready_at

    def end_load(self, name: str, path: str, *, ok: bool) -> None:
        """The load of ``name`` finished: known from now on if ``ok``, else forgotten."""
        self._loading.discard(name)
        if ok:
            self._known[name] = path
        elif name not in self._running:
            self._resident.pop(name, None)

    def unload(self, name: object) -> None:
        """Forget adapter ``name`` (requests for it are refused from now on; running ones
        finish). :class:`LoraError` as vLLM's ``_check_unload_lora_adapter_request``."""
        if not isinstance(name, str) or not name:
            message = "'lora_name' needs to be provided to unload a LoRA adapter."
            raise LoraError(400, "InvalidUserInput", message)
        if name not in self._known:
            raise LoraError(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        del self._known[name]
        if name not in self._running:
            self._resident.pop(name, None)

    def model_cards(self, created: int) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries of the known adapters (vLLM's ``ModelCard``)."""
        return [
            model_card(name, created, root=path, parent=self._base)
            for name, path in self._known.items()
        ]


def modules_from(texts: Iterable[str]) -> tuple[LoraModule, ...]:
    """``name=path`` strings as modules (ValueError naming the bad one)."""
    return tuple(parse_module(t) for t in texts)
