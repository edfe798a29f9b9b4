"""The bounded FIFO of requests waiting for a slot."""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmroute.state.lease import Lease


class WaitState(enum.Enum):
    WAITING = "waiting"
    GRANTED = "granted"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


GrantCallback = Callable[["Lease"], bool]
"""Called with a lease for a waiter; returns False to refuse it (its requester is gone)."""


class Waiter:
    """One request waiting in a pool's queue. Leaves WAITING exactly once."""

    __slots__ = (
        "deadline",
        "enqueued_at",
        "lease",
        "on_grant",
        "on_timeout",
        "request_id",
        "state",
    )

    def __init__(
        self,
        request_id: str,
        enqueued_at: float,
        deadline: float,
        on_grant: GrantCallback,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.on_grant = on_grant
        self.on_timeout = on_timeout
        self.state = WaitState.WAITING
        self.lease: Lease | None = None

    def __repr__(self) -> str:
        return f"Waiter(req={self.request_id} {self.state.value})"


class WaitQueue:
    """FIFO with O(1) append, pop-first and removal from the middle (cancellation)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: OrderedDict[Waiter, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self._items)

    def push(self, waiter: Waiter) -> None:
        self._items[waiter] = None

    def pop(self) -> Waiter:
        return self._items.popitem(last=False)[0]

    def remove(self, waiter: Waiter) -> bool:
        return self._items.pop(waiter, False) is None

    def head(self) -> Waiter | None:
        for w in self._items:
            return w
        return None
