"""The simulated replica's counters and the slot that counts into them.

The accounting identity these keep (stated in ``replica.py``) is what tests rely on to prove
the router never overloads a replica. Not thread-safe: one event loop owns them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class SimStats:
    """A replica's counters, as ``GET /stats`` returns them; :meth:`SimReplica.stats` copies."""

    slots: int
    warm: bool = False
    healthy: bool = True
    # Set: every inference request is answered this status at once (``set_failing``).
    fail_status: int | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    received: int = 0
    received_while_full: int = 0
    received_while_loading: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0  # answered fail_status at once
    # With a prefix cache (``prefix_cache``): admitted requests whose prompt's first block
    # was cached, and their prompts' full blocks, total and cached.
    prefix_hits: int = 0
    prefix_blocks: int = 0
    prefix_blocks_hit: int = 0
    # With a token budget (``set_token_budget``; None: none): tokens of the requests in
    # flight, their peak, and requests refused because they would have gone over it.
    token_budget: int | None = None
    tokens_in_flight: int = 0
    max_tokens_in_flight: int = 0
    received_over_tokens: int = 0
    # With LoRA (``lora``): requests naming no served model or adapter (404, not counted in
    # ``received``), adapter loads (registrations and re-loads of evicted adapters), and
    # requests that waited for their adapter to fit into the running batch.
    unknown_model: int = 0
    lora_loads: int = 0
    lora_waited: int = 0


class Slot:
    """A taken slot, like a lease: ``release()`` is idempotent, its first call sets the outcome."""

    def __init__(self, stats: SimStats, tokens: int = 0) -> None:
        self._stats = stats
        self._held = True
        self._tokens = tokens
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.tokens_in_flight += tokens
        stats.max_tokens_in_flight = max(stats.max_tokens_in_flight, stats.tokens_in_flight)

    def release(self, *, completed: bool) -> bool:
        """Free the slot, counting it ``completed`` or ``cancelled``; False if already freed."""
        if not self._held:
            return False
        self._held = False
        self._stats.in_flight -= 1
        self._stats.tokens_in_flight -= self._tokens
        if completed:
            self._stats.completed += 1
        else:
            self._stats.cancelled += 1
        return True
