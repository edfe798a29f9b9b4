"""The director's input: one request, as a frozen value, whatever front end it came from.

A front end (own-Envoy ext_proc, or the endpoint picker) parses its protocol into a
``Request``: the request id, the pool it goes to (the route's, the picker's, or its
model's), the model, the gateway's subset hint if any, and a ``Source`` to read the rest
from. The director reads from the source only what the request's pool needs (a band
header, a session header, the body's size and completion bound, the prompt), so the
front end never prices, hints or ranks a request itself, and a pool without those
features never pays for them.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Source(Protocol):
    """What the director may read of a request on demand (``warmroute.request.source``)."""

    def header(self, name: str) -> str | None:
        """The first value of request header ``name`` (lower case), or None."""

    def prompt(self, limit: int) -> str:
        """Its prompt (system prompt, messages, ...), at most ``limit`` characters; "" if
        it has none or its body is not at hand."""

    def body_size(self) -> int:
        """Its body's size in bytes (0 if unknown)."""

    def max_tokens(self) -> int | None:
        """The completion bound it names (``max_completion_tokens``, ``max_tokens``), or
        None."""


class _Nothing:
    """A source that knows nothing beyond the request value (tests, internal requests)."""

    def header(self, name: str) -> str | None:
        return None

    def prompt(self, limit: int) -> str:
        return ""

    def body_size(self) -> int:
        return 0

    def max_tokens(self) -> int | None:
        return None


NOTHING: Source = _Nothing()


class Request(NamedTuple):
    """One request for the director (module doc). Immutable (a NamedTuple: one is built
    per request, and a frozen dataclass costs three times as much to build).

    ``pool``: the pool's name (the front end resolved it); ``model``: the model it asks
    for (None: a request without one, e.g. a picker's GET); ``subset``: the gateway's
    subset hint, ``ip:port`` entries or bare IPs (None: no hint; empty: nothing allowed);
    ``received_at``: ``time.perf_counter()`` when the front end got it, so the decision
    time it is measured by includes the parsing (0: from the director's call).
    """

    request_id: str
    pool: str
    model: str | None = None
    subset: tuple[str, ...] | None = None
    source: Source = NOTHING
    received_at: float = 0.0
