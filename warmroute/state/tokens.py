"""Token-aware slots: a replica's capacity in tokens as well as in requests.

A server that batches (vLLM, TGI, SGLang) holds every running request's KV cache at
once: four slots can take four short chats but not four 30k-token prompts. A pool with a
``TokenSpec`` therefore gives each request a *cost*, its estimated prompt tokens plus the
completion tokens it may generate (its ``max_tokens``), reserves that cost on the
replica's address when a lease is granted and refunds it, exactly once, when the lease
ends (released, cancelled, expired, reconciled, revoked). A replica is free for a
request only if it has a free slot *and* ``cost`` free tokens.

Tokens are counted per address like slots (``warmroute.state.replica.Capacity``): the
leases of every pool on one model server share its budget, and when pools disagree on
the budget the smallest wins. Leases of a pool without tokens reserve nothing.

The prompt is estimated from the request body's size (``chars_per_token`` bytes per
token, 4 by default, about right for English with the common BPE tokenizers): warmroute
never tokenizes. The estimate errs on the large side for JSON (keys, quoting and message
structure count too), which only leaves some budget unused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from warmroute.state.waiters import GrantCallback, RankedWaiter, Waiter

MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")
"""The request body's fields that bound its completion, in the order a server reads them
(vLLM: the first present wins; Anthropic's API has only ``max_tokens``)."""


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """A pool's token budget per replica and how it prices a request."""

    capacity: int
    default_max_tokens: int = 1024
    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.default_max_tokens < 0 or self.chars_per_token <= 0:
            raise ValueError(f"invalid token spec {self}")

    def cost(self, body_bytes: int, max_tokens: int | None) -> int:
        """Tokens a request reserves: its prompt estimated from ``body_bytes``, plus its
        ``max_tokens`` (``default_max_tokens`` when the request names none)."""
        prompt = math.ceil(max(0, body_bytes) / self.chars_per_token)
        completion = self.default_max_tokens if max_tokens is None else max(0, max_tokens)
        return prompt + completion


class TokenWaiter(Waiter):
    """A waiter of a pool with tokens: it carries its cost."""

    __slots__ = ("tokens",)

    def __init__(
        self,
        request_id: str,
        enqueued_at: float,
        deadline: float,
        on_grant: GrantCallback,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
        tokens: int = 0,
    ) -> None:
        super().__init__(request_id, enqueued_at, deadline, on_grant, on_timeout, eligible)
        self.tokens = tokens


class TokenRankedWaiter(RankedWaiter):
    """A waiter of a pool with tokens and priority bands."""

    __slots__ = ("tokens",)

    def __init__(
        self,
        request_id: str,
        enqueued_at: float,
        deadline: float,
        on_grant: GrantCallback,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
        lane: tuple[int, str] | None = None,
        on_displaced: Callable[[], None] | None = None,
        tokens: int = 0,
    ) -> None:
        super().__init__(
            request_id, enqueued_at, deadline, on_grant, on_timeout, eligible, lane, on_displaced
        )
        self.tokens = tokens


def cost_of(waiter: Waiter) -> int:
    """A waiter's token cost: 0 for one queued before its pool had tokens."""
    tokens: int = getattr(waiter, "tokens", 0)
    return tokens
