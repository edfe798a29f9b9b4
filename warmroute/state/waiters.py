"""The bounded queue of requests waiting for a slot, FIFO within each eligible set.

A waiter may carry an *eligible set* (EPP mode: the gateway's subset hint, a frozenset of
``ip:port`` addresses); only replicas whose address is in it may serve it. ``None`` means
any replica. The queue keeps one FIFO for the unrestricted waiters and one per distinct
eligible set, and stamps every waiter with a sequence number, so the oldest waiter that
can use a given replica is the oldest among a few group heads: no scan over waiters that
cannot use it. With no eligible sets in the queue it is exactly one FIFO, as it always was.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator
from operator import attrgetter
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

_by_seq = attrgetter("seq")


class Waiter:
    """One request waiting in a pool's queue. Leaves WAITING exactly once.

    ``eligible`` is the set of replica addresses it may be served by (None: any);
    ``seq`` is its place in its pool's arrival order, set when it is queued.
    """

    __slots__ = (
        "deadline",
        "eligible",
        "enqueued_at",
        "lease",
        "on_grant",
        "on_timeout",
        "request_id",
        "seq",
        "state",
    )

    def __init__(
        self,
        request_id: str,
        enqueued_at: float,
        deadline: float,
        on_grant: GrantCallback,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
    ) -> None:
        self.request_id = request_id
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.on_grant = on_grant
        self.on_timeout = on_timeout
        self.eligible = eligible
        self.seq = 0
        self.state = WaitState.WAITING
        self.lease: Lease | None = None

    def __repr__(self) -> str:
        subset = "" if self.eligible is None else f" subset={sorted(self.eligible)}"
        return f"Waiter(req={self.request_id} {self.state.value}{subset})"


_Fifo = OrderedDict[Waiter, None]


class WaitQueue:
    """Waiters in arrival order, grouped by eligible set.

    O(1) push, removal from the middle (cancellation, timeout) and, with no eligible sets
    queued, pop-first. ``len`` counts every waiter, whatever its set; iteration yields them
    oldest first. ``restricted`` counts the waiters that have an eligible set;
    ``unrestricted`` is the FIFO of the others. The pool reads both, and pops the head of
    ``unrestricted`` when ``restricted`` is 0, directly: on its hot path a method call
    would cost as much as the work.
    """

    __slots__ = ("_next_seq", "_subsets", "restricted", "unrestricted")

    def __init__(self) -> None:
        self.unrestricted: _Fifo = OrderedDict()
        self._subsets: dict[frozenset[str], _Fifo] = {}  # only non-empty groups
        self._next_seq = 0
        self.restricted = 0

    def __len__(self) -> int:
        return len(self.unrestricted) + self.restricted

    def __iter__(self) -> Iterator[Waiter]:
        if not self.restricted:
            return iter(self.unrestricted)
        return heapq.merge(self.unrestricted, *self._subsets.values(), key=_by_seq)

    def push(self, waiter: Waiter) -> None:
        waiter.seq = self._next_seq
        self._next_seq += 1
        eligible = waiter.eligible
        if eligible is None:
            self.unrestricted[waiter] = None
            return
        group = self._subsets.get(eligible)
        if group is None:
            group = self._subsets[eligible] = OrderedDict()
        group[waiter] = None
        self.restricted += 1

    def pop(self) -> Waiter:
        """Remove and return the oldest waiter. Raises KeyError if empty."""
        if not self.restricted:
            return self.unrestricted.popitem(last=False)[0]
        waiter = self.head()
        if waiter is None:
            raise KeyError("pop from an empty WaitQueue")
        self.remove(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out. False if it is not in this queue."""
        eligible = waiter.eligible
        if eligible is None:
            return self.unrestricted.pop(waiter, False) is None
        group = self._subsets.get(eligible)
        if group is None or group.pop(waiter, False) is not None:
            return False
        if not group:
            del self._subsets[eligible]
        self.restricted -= 1
        return True

    def head(self) -> Waiter | None:
        """The oldest waiter, or None."""
        best = self.head_unrestricted()
        for group in self._subsets.values():
            first = next(iter(group))
            if best is None or first.seq < best.seq:
                best = first
        return best

    def head_unrestricted(self) -> Waiter | None:
        """The oldest waiter that any replica may serve, or None."""
        for w in self.unrestricted:
            return w
        return None

    def subset_heads(self) -> Iterator[tuple[frozenset[str], Waiter]]:
        """Each distinct eligible set queued, with its oldest waiter, in no particular order."""
        for eligible, group in self._subsets.items():
            yield eligible, next(iter(group))
