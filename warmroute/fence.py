"""The fence's clock: how long a starting control plane distrusts its own slot counts.

At start (a restart, a crash, a first start beside running Envoys) and on becoming
leader, requests routed by a previous process may still run on any replica and their
ends will never be reported here. ``Fence.begin`` asks the registry's book
(``warmroute.state.inflight``) to hold every slot until the truth is known, per replica:
its own metrics scraped, the last old request on it ended, or every Envoy reported its
requests in progress (``warmroute.xds.lrs`` calls ``truth``). Where nothing better
arrives, the grace period ends the fence (``lift_all``).

Runs on the event loop that owns the registry; not safe across threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from warmroute.state.registry import Registry

logger = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


class Fence:
    """Begins the registry's fence and ends it after the grace (module doc).

    ``schedule(delay, fn)`` runs ``fn`` after ``delay`` seconds and returns something to
    ``cancel()``; by default the running loop's ``call_later``.
    """

    def __init__(self, registry: Registry, *, schedule: Schedule = _loop_call_later) -> None:
        self._registry = registry
        self._book = registry.inflight
        self._schedule = schedule
        self._timer: Timer | None = None

    @property
    def fenced(self) -> tuple[str, ...]:
        """The addresses held now (empty once lifted)."""
        return tuple(self._book.view().held)

    def begin(self, reason: str, grace: float) -> int:
        """Hold every slot now, lifting what is still held after ``grace`` seconds; returns
        how many addresses. A second ``begin`` replaces the first."""
        self.cancel()
        held = self._book.begin(reason)
        self._timer = self._schedule(grace, self._lift_now)
        logger.info(
            "%s: %d replica address(es) fenced for up to %gs until their load is known",
            reason, held, grace,
        )  # fmt: skip
        return held

    def _lift_now(self) -> None:
        self._timer = None
        lifted = self.lift()
        if lifted:
            logger.warning(
                "fence: %d replica address(es) lifted by the %s grace period, with nothing "
                "known of their load (no Envoy load report, no metrics)",
                lifted, self._book.reason,
            )  # fmt: skip

    def lift(self) -> int:
        """End the fence now: what is still held counts as idle (a scrape, when it comes,
        may say otherwise). Returns how many addresses were lifted."""
        return self._book.lift_all()

    def truth(self) -> int:
        """Every Envoy reported: lift what is held to what they report."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lifted = self._book.truth()
        logger.info(
            "fence lifted: every Envoy reported its requests in progress (%d address(es) "
            "held until now, %s)",
            lifted, ", ".join(f"{v} by {k}" for k, v in sorted(self._book.lifted.items())),
        )  # fmt: skip
        return lifted

    def cancel(self) -> None:
        """Stop the pending lift (leadership lost, shutting down); what is held stays held
        until the next :meth:`begin`. Safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._book.cancel()
