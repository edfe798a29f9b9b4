"""The bounded queue of requests waiting for a slot: priority bands, fair lanes, subsets.

Three orders nest, outermost first:

* **Bands** (priority): a band is served only when no higher band has a waiter that the
  free replica could serve. Band 0 is the highest.
* **Lanes** (fairness): inside a band, each fairness key (e.g. a tenant) has its own lane,
  and the lanes take turns: the lane just served goes to the back of its band's rotation;
  a lane with nothing waiting leaves it and rejoins at the back. So while two keys both
  wait, neither is served twice before the other is served once.
* **Eligible sets** (EPP subset hints): a waiter may carry a frozenset of ``ip:port``
  addresses; only replicas in it may serve it (``None``: any). A lane keeps one FIFO for
  its unrestricted waiters and one per distinct set, and every waiter is stamped with a
  sequence number, so the oldest waiter of a lane that a replica may serve is the oldest
  among a few group heads: no scan over waiters that cannot use it.

The default lane (the default band, no key) keeps its unrestricted waiters in
``unrestricted``, and ``restricted`` counts every other waiter. While ``restricted`` is 0
the queue is exactly one FIFO, as it always was, and the pool pops its head directly: a
pool without bands, tenants or subsets never touches the rest of this module.

There is one ``Waiter`` type whatever the pool's features: its lane, token cost and
``Ask`` are optional fields, so no feature combination needs its own class.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING

from warmroute.state.priority import PrioritySpec

if TYPE_CHECKING:
    from warmroute.state.ask import Ask
    from warmroute.state.lease import Lease


class WaitState(enum.Enum):
    WAITING = "waiting"
    GRANTED = "granted"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    DISPLACED = "displaced"


GrantCallback = Callable[["Lease"], bool]
"""Called with a lease for a waiter; returns False to refuse it (its requester is gone)."""

_by_seq = attrgetter("seq")

LaneId = tuple[int, str]
"""(band, fairness key) of a waiter outside the default lane."""


class Waiter:
    """One request waiting in a pool's queue. Leaves WAITING exactly once.

    ``eligible`` is the set of replica addresses it may be served by (None: any);
    ``lane`` is its (band, fairness key), None for the default band with no key;
    ``tokens`` its cost in a pool with a token budget (None: slots only); ``ask`` the
    request's whole ``Ask`` (what scorers see when a slot frees for it; None for a
    waiter built by hand). ``seq`` is its place in its pool's arrival order, set when
    it is queued. ``on_displaced`` is called if a higher band's request takes its place.
    """

    __slots__ = (
        "ask",
        "deadline",
        "eligible",
        "enqueued_at",
        "lane",
        "lease",
        "on_displaced",
        "on_grant",
        "on_timeout",
        "request_id",
        "seq",
        "state",
        "tokens",
    )

    def __init__(
        self,
        request_id: str,
        enqueued_at: float,
        deadline: float,
        on_grant: GrantCallback,
        on_timeout: Callable[[], None] | None = None,
        eligible: frozenset[str] | None = None,
        lane: LaneId | None = None,
        on_displaced: Callable[[], None] | None = None,
        tokens: int | None = None,
        ask: Ask | None = None,
    ) -> None:
        self.request_id = request_id
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.on_grant = on_grant
        self.on_timeout = on_timeout
        self.eligible = eligible
        self.lane = lane
        self.on_displaced = on_displaced
        self.tokens = tokens
        self.ask = ask
        self.seq = 0
        self.state = WaitState.WAITING
        self.lease: Lease | None = None

    def __repr__(self) -> str:
        subset = "" if self.eligible is None else f" subset={sorted(self.eligible)}"
        lane = "" if self.lane is None else f" band={self.lane[0]} key={self.lane[1]!r}"
        tokens = "" if self.tokens is None else f" tokens={self.tokens}"
        return f"Waiter(req={self.request_id} {self.state.value}{lane}{subset}{tokens})"


_Fifo = OrderedDict[Waiter, None]


class _Lane:
    """The waiters of one (band, key): a FIFO of unrestricted ones, one per eligible set."""

    __slots__ = ("key", "plain", "subsets")

    def __init__(self, key: str, plain: _Fifo | None = None) -> None:
        self.key = key
        self.plain: _Fifo = OrderedDict() if plain is None else plain
        self.subsets: dict[frozenset[str], _Fifo] = {}  # only non-empty groups

    def __bool__(self) -> bool:
        return bool(self.plain) or bool(self.subsets)

    def groups(self) -> Iterator[_Fifo]:
        if self.plain:
            yield self.plain
        yield from self.subsets.values()

    def servable(self, addresses: Collection[str] | None) -> Waiter | None:
        """The oldest waiter a replica at one of ``addresses`` may serve (None: any)."""
        best = next(iter(self.plain)) if self.plain else None
        for subset, group in self.subsets.items():
            head = next(iter(group))
            if (best is None or head.seq < best.seq) and (
                addresses is None or not subset.isdisjoint(addresses)
            ):
                best = head
        return best

    def newest(self) -> Waiter | None:
        return max((next(reversed(g)) for g in self.groups()), key=_by_seq, default=None)


class WaitQueue:
    """Waiters by band, then lane, then eligible set; see the module doc.

    O(1) push and removal from the middle (cancellation, timeout); pop-first is O(1) with
    only default-lane unrestricted waiters, else a pass over the lanes' group heads.
    ``len`` counts every waiter; iteration yields them oldest first, whatever their band.
    The pool reads ``restricted`` and ``unrestricted`` and pops the head of
    ``unrestricted`` when ``restricted`` is 0, directly: on its hot path a method call
    would cost as much as the work.
    """

    __slots__ = (
        "_counts",
        "_default",
        "_default_lane",
        "_next_seq",
        "_rotations",
        "restricted",
        "unrestricted",
    )

    def __init__(self, bands: int = 1, default: int = 0) -> None:
        if not 0 <= default < bands:
            raise ValueError(f"default band {default} is not one of {bands} bands")
        self.unrestricted: _Fifo = OrderedDict()
        self._default = default
        self._default_lane = _Lane("", self.unrestricted)
        # Per band, its lanes with waiters in turn order (the next to serve first). While
        # ``restricted`` is 0 the default lane's entry is not kept up to date (the hot path
        # skips it); it is re-synced when the first restricted waiter arrives.
        self._rotations: list[OrderedDict[str, _Lane]] = [OrderedDict() for _ in range(bands)]
        self._counts = [0] * bands  # per band, its waiters outside ``unrestricted``
        self._next_seq = 0
        self.restricted = 0

    @property
    def bands(self) -> int:
        return len(self._rotations)

    def __len__(self) -> int:
        return len(self.unrestricted) + self.restricted

    def __iter__(self) -> Iterator[Waiter]:
        if not self.restricted:
            return iter(self.unrestricted)
        groups = [g for rot in self._rotations for lane in rot.values() for g in lane.groups()]
        return heapq.merge(*groups, key=_by_seq)

    def band_len(self, band: int) -> int:
        """Waiters queued in ``band``."""
        n = self._counts[band]
        return n + len(self.unrestricted) if band == self._default else n

    def push(self, waiter: Waiter) -> None:
        """Queue a waiter in its lane (``waiter.lane``; None: the default lane). A waiter
        of the default lane that any replica may serve is the hot path: one dict insert."""
        waiter.seq = self._next_seq
        self._next_seq += 1
        lane = waiter.lane
        eligible = waiter.eligible
        if lane is None:
            if eligible is None:
                self.unrestricted[waiter] = None
                if self.restricted:
                    self._join(self._default, self._default_lane)
                return
            self._push_lane(waiter, self._default, "", eligible)
            return
        self._push_lane(waiter, lane[0], lane[1], eligible)

    def _push_lane(
        self, waiter: Waiter, band: int, key: str, eligible: frozenset[str] | None
    ) -> None:
        if not self.restricted:
            self._resync_default()
        lane = self._lane_at(band, key)
        if lane is None:
            lane = self._default_lane if (band, key) == (self._default, "") else _Lane(key)
            self._rotations[band][key] = lane  # joins at the back of the rotation
        if eligible is None:
            lane.plain[waiter] = None
        else:
            group = lane.subsets.get(eligible)
            if group is None:
                group = lane.subsets[eligible] = OrderedDict()
            group[waiter] = None
        self._counts[band] += 1
        self.restricted += 1

    def pop(self) -> Waiter:
        """Remove and return the next waiter to serve (``head``). Raises KeyError if empty."""
        if not self.restricted:
            return self.unrestricted.popitem(last=False)[0]
        waiter = self.head()
        if waiter is None:  # pragma: no cover - restricted > 0 means a waiter exists
            raise KeyError("pop from an empty WaitQueue")
        self.take(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> bool:
        """Take ``waiter`` out (cancelled, timed out, displaced). False if it is not here."""
        eligible = waiter.eligible
        if eligible is None:
            if self.unrestricted.pop(waiter, False) is None:  # it was there
                if self.restricted and not self._default_lane:
                    self._rotations[self._default].pop("", None)
                return True
            if waiter.lane is None:
                return False
        band, key = (self._default, "") if waiter.lane is None else waiter.lane
        lane = self._lane_at(band, key)
        if lane is None:
            return False
        if eligible is None:
            if lane.plain.pop(waiter, False) is not None:
                return False
        else:
            group = lane.subsets.get(eligible)
            if group is None or group.pop(waiter, False) is not None:
                return False
            if not group:
                del lane.subsets[eligible]
        if not lane:
            del self._rotations[band][key]
        self._counts[band] -= 1
        self.restricted -= 1
        return True

    def take(self, waiter: Waiter) -> bool:
        """Remove ``waiter`` because it is being served: its lane's turn passes."""
        if not self.remove(waiter):
            return False
        if self.restricted:  # else only the default lane waits: no turns to pass
            band, key = (self._default, "") if waiter.lane is None else waiter.lane
            rotation = self._rotations[band]
            if key in rotation:
                rotation.move_to_end(key)
        return True

    def select(self, addresses: Collection[str] | None = None) -> Waiter | None:
        """The next waiter to serve on a replica at one of ``addresses`` (None: any).

        The highest band with such a waiter; in it, the first lane in turn that has one;
        in that lane, its oldest such waiter.
        """
        if not self.restricted:
            for w in self.unrestricted:
                return w
            return None
        for rotation in self._rotations:
            for lane in rotation.values():
                found = lane.servable(addresses)
                if found is not None:
                    return found
        return None

    def head(self) -> Waiter | None:
        """The next waiter to serve if every replica were free, or None."""
        return self.select(None)

    def head_unrestricted(self) -> Waiter | None:
        """The oldest waiter of the default lane that any replica may serve, or None."""
        for w in self.unrestricted:
            return w
        return None

    def subset_heads(self) -> Iterator[tuple[frozenset[str], Waiter]]:
        """Each lane's eligible sets with their oldest waiter, in no particular order."""
        for rotation in self._rotations:
            for lane in rotation.values():
                for eligible, group in lane.subsets.items():
                    yield eligible, next(iter(group))

    def newest_below(self, band: int) -> Waiter | None:
        """The newest waiter of the lowest band below ``band`` that has one, or None."""
        for lower in range(len(self._rotations) - 1, band, -1):
            if not self.band_len(lower):
                continue
            if not self.restricted:
                return next(reversed(self.unrestricted))
            lanes = self._rotations[lower].values()
            return max(filter(None, (lane.newest() for lane in lanes)), key=_by_seq)
        return None

    def _lane_at(self, band: int, key: str) -> _Lane | None:
        return self._rotations[band].get(key)

    def _join(self, band: int, lane: _Lane) -> None:
        rotation = self._rotations[band]
        if lane.key not in rotation:
            rotation[lane.key] = lane

    def _resync_default(self) -> None:
        """The first restricted waiter arrives: the default lane's rotation entry is
        stale (the hot path skipped it); it is the only lane, so put it first if it waits."""
        rotation = self._rotations[self._default]
        rotation.pop("", None)
        if self.unrestricted:
            rotation[""] = self._default_lane
            rotation.move_to_end("", last=False)


def new_queue(priority: PrioritySpec | None) -> WaitQueue:
    """An empty queue with ``priority``'s bands (one FIFO without)."""
    if priority is None:
        return WaitQueue()
    return WaitQueue(len(priority.bands), priority.default)


def requeue(queue: WaitQueue, old: PrioritySpec | None, new: PrioritySpec) -> WaitQueue:
    """``queue``'s waiters in a queue built for ``new`` bands (``queue`` itself if they
    are the same bands as ``old``).

    Waiters keep their arrival order and fairness key; each moves to the band of the same
    name, or to the default band if there is none any more (as does a waiter queued while
    the pool had no bands).
    """
    if old is not None and old.names == new.names and old.default == new.default:
        return queue
    rebuilt = new_queue(new)
    for w in list(queue):
        name = None
        if old is not None:
            name = old.bands[old.default if w.lane is None else w.lane[0]].name
        index = new.index(name)
        key = "" if w.lane is None else w.lane[1]
        w.lane = None if index == new.default and not key else (index, key)
        rebuilt.push(w)
    return rebuilt
