"""Fault injection for the test API server: make requests fail the way a sick server does.

Rules are checked in the order they were added; the first active rule that matches a
request's resource and verb fails it with its Status code. A rule is active for its next
``count`` matching requests, or until its deadline. Synchronous and clock-injected, so the
logic is testable without a server; safe to use from one event loop only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.kubeapi.status import ApiError, injected


@dataclass(slots=True)
class _Rule:
    code: int
    remaining: int | None  # None: no count limit
    deadline: float | None  # None: no time limit
    resource: str | None
    verb: str | None
    retry_after: int | None
    every: int = 1  # fail only every n-th matching request (the others are served)
    seen: int = 0

    def active(self, now: float) -> bool:
        spent = self.remaining is not None and self.remaining <= 0
        return not spent and (self.deadline is None or now < self.deadline)

    def matches(self, resource: str, verb: str) -> bool:
        return self.resource in (None, resource) and self.verb in (None, verb)


class Faults:
    """The active fault rules. ``resource`` is a plural with optional subresource
    (``pods``, ``deployments/scale``); ``verb`` a Kubernetes verb (``list``, ``watch``,
    ``get``, ``create``, ``update``, ``patch``, ``delete``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rules: list[_Rule] = []
        self.injected = 0
        self._hangs: list[tuple[str | None, str | None]] = []
        self._released: asyncio.Event | None = None
        self.hanging = 0  # requests held unanswered right now

    def add_count(
        self,
        count: int,
        code: int,
        *,
        resource: str | None = None,
        verb: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Fail the next ``count`` matching requests."""
        self._rules.append(_Rule(code, count, None, resource, verb, retry_after))

    def add_window(
        self,
        seconds: float,
        code: int,
        *,
        resource: str | None = None,
        verb: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Fail every matching request for the next ``seconds``."""
        deadline = self._clock() + seconds
        self._rules.append(_Rule(code, None, deadline, resource, verb, retry_after))

    def add_every(
        self,
        every: int,
        code: int,
        *,
        resource: str | None = None,
        verb: str | None = None,
    ) -> None:
        """Fail every ``every``-th matching request from now on (2: every other one, a
        flapping server), until :meth:`clear`."""
        self._rules.append(_Rule(code, None, None, resource, verb, None, every))

    def add_hang(self, *, resource: str | None = None, verb: str | None = None) -> None:
        """Hold every matching request unanswered (a hung server) until
        :meth:`release_hangs` or :meth:`clear`; the client sees only its own timeout."""
        self._hangs.append((resource, verb))

    def release_hangs(self) -> None:
        """Let held requests go on (to their error rules, then to be served)."""
        self._hangs.clear()
        if self._released is not None:
            self._released.set()
            self._released = None

    async def hold(self, resource: str, verb: str) -> None:
        """Wait while a hang rule matches this request."""
        while any(r in (None, resource) and v in (None, verb) for r, v in self._hangs):
            if self._released is None:
                self._released = asyncio.Event()
            self.hanging += 1
            try:
                await self._released.wait()
            finally:
                self.hanging -= 1

    def clear(self) -> None:
        self._rules.clear()
        self.release_hangs()

    def check(self, resource: str, verb: str) -> ApiError | None:
        """The failure to answer this request with, consuming one count; None to serve it."""
        now = self._clock()
        self._rules = [r for r in self._rules if r.active(now)]
        for rule in self._rules:
            if rule.matches(resource, verb):
                rule.seen += 1
                if rule.seen % rule.every:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.injected += 1
                return injected(rule.code, rule.retry_after)
        return None
