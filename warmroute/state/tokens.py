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
from dataclasses import dataclass

from warmroute.errors import RequestTooLarge
from warmroute.state.waiters import Waiter

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


def check_tokens(spec: TokenSpec | None, tokens: int, pool: str) -> None:
    """Raise RequestTooLarge if ``tokens`` is over a replica's whole budget in ``spec``
    (pool ``pool``): such a request could never be served, so it is refused at once."""
    if spec is not None and tokens > spec.capacity:
        raise RequestTooLarge(
            f"the request needs about {tokens} tokens (prompt estimate plus max_tokens) "
            f"but a replica of pool {pool!r} holds at most {spec.capacity}; "
            "lower max_tokens or shorten the prompt"
        )


def cost_of(waiter: Waiter) -> int:
    """A waiter's token cost: 0 for one queued without tokens."""
    return 0 if waiter.tokens is None else waiter.tokens
