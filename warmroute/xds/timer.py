"""One asyncio timer for a deadline that keeps moving (the rollout's end of soak).

The rollout is pure bookkeeping: it says when its next deadline is, in its own clock
(``Rollout.next_deadline``), and calls a hook when that changes (``Rollout.on_deadline``).
``DeadlineTimer`` turns that into exactly one ``loop.call_later`` handle, re-armed on
change and cancelled on close; when it fires it calls ``Rollout.tick``. So a soak ends on
time, not at the next housekeeping tick. Runs on one event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class DeadlineTimer:
    """Calls ``fire()`` at ``deadline()`` (in ``clock`` time), through one loop timer.

    Call ``rearm()`` whenever ``deadline()`` may have changed: it keeps the pending timer
    if the deadline is the same, else replaces it (``None``: no timer). After ``fire``
    it re-arms by itself, so an owner that was not done yet (its clock a hair behind the
    loop's) is asked again. Without a running event loop (a pure test, or before the
    server starts) nothing is scheduled; the owner's periodic tick is then the only
    driver. An exception from ``fire`` is logged and swallowed, as for any loop callback.
    """

    def __init__(
        self,
        deadline: Callable[[], float | None],
        fire: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deadline = deadline
        self._fire = fire
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None  # the deadline the pending timer is for
        self._closed = False

    @property
    def armed_for(self) -> float | None:
        """The deadline a loop timer is pending for, or None."""
        return self._when if self._handle is not None else None

    def rearm(self) -> None:
        when = None if self._closed else self._deadline()
        if self._handle is not None and when == self._when:
            return
        self._cancel()
        if when is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # call_later, not call_at: the deadline is in the injected clock, not loop.time().
        self._when = when
        self._handle = loop.call_later(max(0.0, when - self._clock()), self._run)

    def close(self) -> None:
        """Cancel the pending timer for good; ``rearm`` does nothing afterwards."""
        self._closed = True
        self._cancel()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._when = None

    def _run(self) -> None:
        self._handle = None
        self._when = None
        try:
            self._fire()
        except Exception:
            logger.exception("deadline callback failed")
        self.rearm()
