"""Requests on the replicas that this process did not lease: a start's fence, Envoys' counts.

The ledger knows only the leases it granted. Two kinds of traffic escape it:

* after a start (a restart, a crash, a new leader), requests routed by the previous
  process may still run on any replica, and their ends will never be reported here;
* Envoy may send requests without a lease (``failure_mode_allow``), and a lease's end
  may be lost (an access-log stream broken while its entry was in flight).

The fleet knows better: every Envoy counts its requests in progress per endpoint and
reports them (LRS, ``report``), and a replica's own metrics say what it runs (the scrape,
``Pool.set_external``). This book turns what Envoys report into busy slots per address
("unleased"), which ``Pool.set_unleased`` adds to the slot rule.

**The fence.** ``begin()`` holds every slot of every address, known now or appearing
later, until the truth about that address is known: a scrape since (``scraped``), a
complete round of Envoy load reports (``truth``), or the end of the grace period
(``lift_all``). Meanwhile each end of a request carrying a lease the previous process
granted (``unknown_end``, from the access log) lowers the address's bound by one: that
process kept at most ``slots`` requests there, so an address whose bound reaches 0 is
free the instant its last old request ends, before any report.

**The reports.** Per address, E is the requests in progress summed over every Envoy's
latest report. Against the ledger, ``u = max(0, E - leased + young)``, where ``young``
are leases granted in the last ``young_seconds`` (Envoy may not yet count a request we
just routed). Counts are snapshots taken a few milliseconds before they arrive, so a
lease that ends in between makes one report read one too high. Hence:

* a previous process's requests ("orphans", counted when the fence lifts) only ever
  end: their count falls to ``max(u, u_prev)`` (two reports agreeing), or by one at
  once when the access log reports one of them ended; it never rises;
* other unleased traffic counts as ``min(u, u_prev)``: it must show in two reports in a
  row, so a race costs no slot; a real newcomer is counted one interval later;
* a lease older than the pool's ``reconcile_after_seconds`` that no Envoy counted in two
  reports in a row lost its end: it is reclaimed (``lost``), when ``reclaim`` is allowed
  (every Envoy that may hold leases reports).

Pure: no I/O, no timers; the caller passes time through the registry's clock. Not
thread-safe: used from the event loop that owns the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from warmroute.state.lease import Lease
from warmroute.state.replica import Capacity
from warmroute.state.snapshot import FenceView

Clock = Callable[[], float]


@dataclass(slots=True)
class _Address:
    """What the book knows of one address."""

    held: int | None = None  # the fence's bound while fenced, else None
    orphans: int = 0  # a previous process's requests still running (from reports)
    u_prev: int = 0  # the last report's unleased count
    newcomers: int = 0  # other unleased traffic, seen in two reports in a row
    short_prev: int = 0  # the last report's count of old leases Envoy did not count
    in_progress: int = 0  # E: what Envoys last reported in progress here
    unleased: int = 0  # what is applied now (busy slots beyond our leases)

    @property
    def idle(self) -> bool:
        """Nothing held, counted or remembered: a report of 0 changes nothing here."""
        return not (
            self.held is not None
            or self.orphans
            or self.u_prev
            or self.newcomers
            or self.short_prev
            or self.in_progress
            or self.unleased
        )


@dataclass(slots=True)
class Outcome:
    """What one evaluation of the reports found, for the metrics adapter."""

    unleased_seen: dict[str, int] = field(default_factory=dict)  # address -> newly counted
    lost: list[Lease] = field(default_factory=list)  # leases reclaimed as lost


class InFlightBook:
    """The fence and the Envoys' counts, per address. See the module doc.

    ``capacities`` is the registry's address -> ``Capacity`` map (read only);
    ``set_unleased(capacity, n)`` applies a count to every pool listing the address;
    ``reclaim(capacity, n)`` ends the ``n`` oldest leases there older than their pool's
    ``reconcile_after_seconds`` and returns them.
    """

    def __init__(
        self,
        capacities: Mapping[str, Capacity],
        *,
        clock: Clock,
        set_unleased: Callable[[Capacity, int], None],
        reclaim: Callable[[Capacity, int], list[Lease]],
        own_lease: Callable[[str], bool],
        young_seconds: float = 0.25,
    ) -> None:
        self._capacities = capacities
        self._clock = clock
        self._set_unleased = set_unleased
        self._reclaim = reclaim
        self._own_lease = own_lease
        self.young_seconds = young_seconds
        self._addresses: dict[str, _Address] = {}
        self._nodes: dict[str, dict[str, int]] = {}  # node -> address -> in progress
        self._totals: dict[str, int] = {}  # address -> in progress, summed over nodes
        self.fencing = False
        self.reason = ""
        self.since = 0.0
        self.lifted: dict[str, int] = {}

    # -- the fence -------------------------------------------------------------------------

    def begin(self, reason: str) -> int:
        """Hold every slot of every address until its truth is known; returns how many
        addresses. Addresses that appear later are held too, until ``lift_all``."""
        self.fencing = True
        self.reason = reason
        self.since = self._clock()
        self.lifted = {}
        for address, capacity in self._capacities.items():
            self._hold(address, capacity)
        return len(self._capacities)

    def added(self, address: str) -> None:
        """A replica appeared at ``address`` (maybe in one more pool): held while the fence
        is up, and given what the book counts there."""
        capacity = self._capacities.get(address)
        if capacity is None:
            return
        state = self._addresses.get(address)
        if self.fencing and (state is None or state.held is None):
            self._hold(address, capacity)
        elif state is not None and (state.held or state.unleased):
            self._apply(address, state, capacity, force=True)

    def _hold(self, address: str, capacity: Capacity) -> None:
        state = self._state(address)
        if state.held is not None:
            return
        state.held = capacity.slots
        self._apply(address, state, capacity, force=True)

    def unknown_end(self, address: str, lease_id: str) -> bool:
        """A request with lease ``lease_id`` ended on ``address`` and the ledger has no such
        lease. A previous process's lease lowers the held bound, or, once the fence lifted
        to what Envoys reported, the count of old requests still running; True if it did."""
        if self._own_lease(lease_id):
            return False  # ours, already ended (expired, reconciled): not an old request
        state = self._addresses.get(address)
        if state is None:
            return False
        if state.held is None:
            if state.orphans == 0:
                return False
            # Lifted to what Envoys reported: this end is one of those old requests, so
            # its slot is free now, not two reports from now.
            state.orphans -= 1
            state.u_prev = max(0, state.u_prev - 1)
            self._apply(address, state, self._capacities.get(address))
            return True
        if state.held == 0:
            return False
        state.held -= 1
        if state.held == 0:
            self._lift(address, state, "ends")
        else:
            self._apply(address, state, self._capacities.get(address))
        return True

    def scraped(self, address: str) -> None:
        """The replica's own metrics were read: its scraped load replaces the fence."""
        state = self._addresses.get(address)
        if state is not None and state.held is not None:
            self._lift(address, state, "scrape")

    def truth(self) -> int:
        """Every Envoy that may hold requests has reported since the fence went up: lift
        every held address to what they report. Returns how many were lifted."""
        lifted = 0
        self.prune()
        for address, state in self._addresses.items():
            if state.held is None:
                continue
            # ``evaluate`` (run on the report that completed the round) left what Envoys
            # count beyond our leases in ``u_prev``: those are the old requests.
            state.orphans = state.u_prev
            state.newcomers = 0
            self._lift(address, state, "reports")
            lifted += 1
        self.fencing = False
        return lifted

    def lift_all(self) -> int:
        """The grace period ended: what is still held counts as idle. Returns how many."""
        lifted = 0
        self.prune()
        for address, state in self._addresses.items():
            if state.held is not None:
                self._lift(address, state, "grace")
                lifted += 1
        self.fencing = False
        return lifted

    def cancel(self) -> None:
        """Stop fencing new addresses (leadership lost); held ones stay until lifted."""
        self.fencing = False

    def _lift(self, address: str, state: _Address, how: str) -> None:
        state.held = None
        self.lifted[how] = self.lifted.get(how, 0) + 1
        self._apply(address, state, self._capacities.get(address))

    # -- Envoys' reports -------------------------------------------------------------------

    def report(self, node: str, counts: Mapping[str, int]) -> None:
        """Node ``node``'s latest requests in progress per address (absent: 0). Replaces its
        previous report; call ``evaluate`` to act on it. Costs the two reports' sizes, not
        every node's (the sum over nodes is kept up to date)."""
        self._retotal(self._nodes.get(node), -1)
        self._nodes[node] = dict(counts)
        self._retotal(self._nodes[node], 1)

    def forget(self, node: str) -> None:
        """A node stopped reporting (its stream ended and did not come back)."""
        self._retotal(self._nodes.pop(node, None), -1)

    def _retotal(self, counts: Mapping[str, int] | None, sign: int) -> None:
        if not counts:
            return
        totals = self._totals
        for address, n in counts.items():
            left = totals.get(address, 0) + sign * n
            if left:
                totals[address] = left
            else:
                totals.pop(address, None)

    @property
    def reporting(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def evaluate(self, *, reclaim: bool) -> Outcome:
        """Reconcile every address with the latest reports (module doc). Costs one pass
        over the addresses; an idle one (nothing reported, leased or counted) is skipped."""
        totals = self._totals
        outcome = Outcome()
        now = self._clock()
        young_after = now - self.young_seconds
        addresses = self._addresses
        for address, capacity in self._capacities.items():
            e = totals.get(address, 0)
            state = addresses.get(address)
            if state is None:
                if not e and not capacity.leased:
                    continue
                state = addresses[address] = _Address()
            elif not e and not capacity.leased and state.idle:
                continue
            state.in_progress = e
            young = 0
            old = 0
            if capacity.leased:
                for lease in capacity.leases():
                    if lease.acquired_at > young_after:
                        young += 1
                    elif now - lease.acquired_at >= lease.pool.spec.reconcile_after_seconds:
                        old += 1
            u = max(0, e - capacity.leased + young)
            if state.held is None:
                if state.orphans:
                    state.orphans = min(state.orphans, max(u, state.u_prev))
                newcomers = min(u, state.u_prev)
                if newcomers > max(state.orphans, state.newcomers):
                    outcome.unleased_seen[address] = newcomers - max(state.orphans, state.newcomers)
                state.newcomers = newcomers
            state.u_prev = u
            # Leases old enough that Envoy must count them, but Envoy counts fewer.
            short = max(0, old - e)
            if reclaim and short and state.short_prev and state.held is None:
                outcome.lost.extend(self._reclaim(capacity, min(short, state.short_prev)))
            state.short_prev = short
            self._apply(address, state, capacity)
        return outcome

    # -- reads -----------------------------------------------------------------------------

    def in_progress(self, address: str) -> int:
        state = self._addresses.get(address)
        return 0 if state is None else state.in_progress

    def held(self, address: str) -> int | None:
        state = self._addresses.get(address)
        return None if state is None else state.held

    def view(self) -> FenceView:
        return FenceView(
            active=self.fencing,
            reason=self.reason,
            since=self.since,
            held={a: s.held for a, s in self._addresses.items() if s.held is not None},
            lifted=dict(self.lifted),
            reporting_envoys=len(self._nodes),
        )

    # -- internals -------------------------------------------------------------------------

    def _state(self, address: str) -> _Address:
        state = self._addresses.get(address)
        if state is None:
            state = self._addresses[address] = _Address()
        return state

    def _apply(
        self, address: str, state: _Address, capacity: Capacity | None, *, force: bool = False
    ) -> None:
        value = state.held if state.held is not None else max(state.orphans, state.newcomers)
        if value == state.unleased and not force:
            return
        state.unleased = value
        if capacity is not None:
            self._set_unleased(capacity, value)

    def prune(self) -> None:
        """Forget addresses no pool lists any more."""
        for address in [a for a in self._addresses if a not in self._capacities]:
            del self._addresses[address]
