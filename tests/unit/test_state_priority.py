"""Priority bands, fairness lanes and displacement in a pool's queue (pure core, fake clock).

Table tests pin the orders (band, then lane in turn, then arrival), the bounds and the
displacement rule; a hypothesis state machine mixes them with eligible sets, refusals,
cancellations, timeouts and replica changes and checks after every step that no slot
idles while a waiter it could serve waits, that a higher band always goes first, that no
lane is served twice while another lane of its band waits with a waiter any replica could
serve, and that an address never holds more leases than slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.unit.test_state_pool import Env, Requester, make_env, state_of
from warmroute.errors import QueueFull
from warmroute.state import Lease, Phase, PoolSpec, ReplicaUpsert, Waiter, WaitState
from warmroute.state.ask import Ask
from warmroute.state.priority import BandSpec, PrioritySpec
from warmroute.state.waiters import WaitQueue

INTERACTIVE, BATCH = 0, 1


def ranked(
    *bands: BandSpec | str,
    default: int | None = None,
    max_waiting: int = 1000,
    model_bands: tuple[tuple[str, int], ...] = (),
) -> PoolSpec:
    specs = tuple(BandSpec(b) if isinstance(b, str) else b for b in bands)
    return PoolSpec(
        "p",
        ("m",),
        max_waiting=max_waiting,
        priority=PrioritySpec(
            specs, default=len(specs) - 1 if default is None else default, model_bands=model_bands
        ),
    )


@dataclass
class Log:
    """Who was granted, in order, and who was turned away."""

    granted: list[str] = field(default_factory=list)
    displaced: list[str] = field(default_factory=list)
    requesters: dict[str, Requester] = field(default_factory=dict)

    def wait(
        self,
        env: Env,
        request_id: str,
        band: int | str | None = None,
        key: str = "",
        eligible: frozenset[str] | None = None,
    ) -> Waiter:
        requester = self.requesters[request_id] = Requester()

        def on_grant(lease: Lease) -> bool:
            self.granted.append(request_id)
            return requester.on_grant(lease)

        return env.pool().enqueue(
            Ask(request_id, eligible=eligible, band=band, key=key),
            on_grant,
            on_timeout=requester.on_timeout,
            on_displaced=lambda: self.displaced.append(request_id),
        )


def drain(env: Env, log: Log) -> list[str]:
    """Release every lease one at a time until nothing waits; the grant order."""
    pool = env.pool()
    start = len(log.granted)
    while pool.queue:
        lease = next(iter(pool.active_leases()))
        lease.release()
    return log.granted[start:]


def busy_env(spec: PoolSpec, slots: int = 1) -> Env:
    env = make_env(spec)
    env.warm("a", slots)
    for i in range(slots):
        env.acquire(f"busy{i}")
    return env


# -- orders ------------------------------------------------------------------------------------


def test_a_higher_band_is_served_before_an_older_lower_one() -> None:
    env, log = busy_env(ranked("interactive", "batch")), Log()
    arrivals: list[tuple[str, int | str]] = [
        ("b1", "batch"),
        ("b2", "batch"),
        ("i1", "interactive"),
        ("i2", INTERACTIVE),
    ]
    for name, band in arrivals:
        log.wait(env, name, band)
    assert [w.request_id for w in env.pool().queue] == ["b1", "b2", "i1", "i2"]  # arrival
    assert drain(env, log) == ["i1", "i2", "b1", "b2"]


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        pytest.param(
            [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("a4", "A"), ("b2", "B")],
            ["a1", "b1", "a2", "b2", "a3", "a4"],
            id="two-tenants-take-turns",
        ),
        pytest.param(
            [("a1", "A"), ("a2", "A"), ("n1", ""), ("c1", "C"), ("n2", "")],
            ["a1", "n1", "c1", "a2", "n2"],
            id="no-key-is-a-lane-too",
        ),
        pytest.param(
            [("a1", "A"), ("a2", "A"), ("a3", "A")],
            ["a1", "a2", "a3"],
            id="one-tenant-is-fifo",
        ),
    ],
)
def test_lanes_of_a_band_take_turns(arrivals: list[tuple[str, str]], expected: list[str]) -> None:
    env, log = busy_env(ranked("only")), Log()
    for name, key in arrivals:
        log.wait(env, name, key=key)
    assert drain(env, log) == expected


def test_a_lane_that_empties_rejoins_at_the_back() -> None:
    env, log = busy_env(ranked("only")), Log()
    log.wait(env, "a1", key="A")
    log.wait(env, "b1", key="B")
    log.wait(env, "b2", key="B")
    next(iter(env.pool().active_leases())).release()
    assert log.granted == ["a1"]  # A's lane is empty now and left the rotation
    log.wait(env, "a2", key="A")  # rejoins behind B
    assert drain(env, log) == ["b1", "a2", "b2"]


def test_many_lanes_are_each_served_once_per_round() -> None:
    env, log = busy_env(ranked("only")), Log()
    demand = {"heavy": 10, "light": 1, "mid": 3}
    for key, n in demand.items():
        for i in range(n):
            log.wait(env, f"{key}{i}", key=key)
    order = [name.rstrip("0123456789") for name in drain(env, log)]
    assert order[:3] == ["heavy", "light", "mid"]
    assert order[3:7] == ["heavy", "mid", "heavy", "mid"]
    assert order[7:] == ["heavy"] * 7


def test_a_band_is_skipped_for_a_replica_none_of_its_waiters_may_use() -> None:
    env, log = make_env(ranked("interactive", "batch")), Log()
    env.warm("a")
    env.warm("b")
    lease_a, lease_b = env.acquire("x"), env.acquire("y")
    assert {lease_a.address, lease_b.address} == {"a", "b"}
    log.wait(env, "batch", BATCH)
    log.wait(env, "only-b", INTERACTIVE, eligible=frozenset({"b"}))
    (lease_a if lease_a.address == "a" else lease_b).release()
    assert log.granted == ["batch"]  # the interactive waiter cannot use a
    (lease_b if lease_b.address == "b" else lease_a).release()
    assert log.granted == ["batch", "only-b"]


def test_inside_a_lane_the_oldest_usable_waiter_goes_first() -> None:
    env, log = make_env(ranked("only")), Log()
    env.warm("a")
    env.warm("b")
    leases = {lease.address: lease for lease in (env.acquire("x"), env.acquire("y"))}
    log.wait(env, "on-b", key="T", eligible=frozenset({"b"}))
    log.wait(env, "any", key="T")
    log.wait(env, "on-a", key="T", eligible=frozenset({"a"}))
    leases["a"].release()
    assert log.granted == ["any"]  # "on-b" is older but cannot use a
    leases["b"].release()
    assert log.granted == ["any", "on-b"]
    log.requesters["any"].offered[0].release()
    assert log.granted == ["any", "on-b", "on-a"]


def test_model_band_and_header_choose_the_band() -> None:
    spec = ranked("interactive", "batch", model_bands=(("chat", INTERACTIVE),)).priority
    assert spec is not None
    assert spec.choose(None, "chat") == INTERACTIVE
    assert spec.choose(None, "other") == BATCH
    assert spec.choose("batch", "chat") == BATCH  # a band the header names wins
    assert spec.choose("urgent!", "other") == BATCH  # unknown names are ignored
    assert spec.choose("urgent!", "chat") == INTERACTIVE
    assert spec.index("interactive") == INTERACTIVE and spec.index(None) == BATCH
    with pytest.raises(ValueError, match="band 5"):
        spec.index(5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"bands": ()}, "at least one band", id="no-bands"),
        pytest.param({"bands": (BandSpec("x"),), "default": 1}, "default band", id="default"),
        pytest.param(
            {"bands": (BandSpec("x"),), "model_bands": (("m", 3),)}, "out of range", id="model"
        ),
    ],
)
def test_priority_spec_refuses_inconsistent_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrioritySpec(**kwargs)  # type: ignore[arg-type]


# -- bounds, timeouts, displacement -----------------------------------------------------------


def test_a_full_pool_displaces_the_newest_waiter_of_the_lowest_band() -> None:
    spec = ranked("top", "mid", "low", max_waiting=4)
    env, log = busy_env(spec), Log()
    waiters = {
        name: log.wait(env, name, band)
        for name, band in [("low1", "low"), ("low2", "low"), ("mid1", "mid"), ("top1", "top")]
    }
    top2 = log.wait(env, "top2", "top")
    assert log.displaced == ["low2"]
    assert state_of(waiters["low2"]) is WaitState.DISPLACED
    assert state_of(top2) is WaitState.WAITING
    mid2 = log.wait(env, "mid2", "mid")
    assert log.displaced == ["low2", "low1"]
    # Nothing below "mid" is left to displace: a third mid request, or a low one, is refused.
    with pytest.raises(QueueFull):
        log.wait(env, "mid3", "mid")
    with pytest.raises(QueueFull):
        log.wait(env, "low3", "low")
    pool = env.pool()
    assert (pool.counters.displaced, pool.counters.rejected_queue_full) == (2, 2)
    assert len(pool.queue) == 4
    assert drain(env, log) == ["top1", "top2", "mid1", "mid2"]
    assert state_of(mid2) is WaitState.GRANTED
    assert log.requesters["low1"].offered == []  # a displaced waiter is never granted


def test_a_full_band_refuses_even_with_room_in_the_pool() -> None:
    spec = ranked(BandSpec("interactive", max_waiting=1), BandSpec("batch"), max_waiting=10)
    env, log = busy_env(spec), Log()
    log.wait(env, "b1", "batch")
    log.wait(env, "i1", "interactive")
    with pytest.raises(QueueFull, match="'interactive'"):
        log.wait(env, "i2", "interactive")
    assert log.displaced == []
    log.wait(env, "b2", "batch")  # other bands still have room
    assert len(env.pool().queue) == 3


def test_the_lowest_band_never_displaces() -> None:
    env, log = busy_env(ranked("interactive", "batch", max_waiting=1)), Log()
    log.wait(env, "i1", INTERACTIVE)
    with pytest.raises(QueueFull):
        log.wait(env, "i2", INTERACTIVE)  # same band: no one below to displace
    with pytest.raises(QueueFull):
        log.wait(env, "b1", BATCH)
    assert log.displaced == []


def test_each_band_has_its_own_timeout() -> None:
    spec = ranked(BandSpec("interactive", queue_timeout=5.0), BandSpec("batch", queue_timeout=60))
    env, log = busy_env(spec), Log()
    fast = log.wait(env, "i", "interactive")
    slow = log.wait(env, "b", "batch")
    assert (fast.deadline, slow.deadline) == (5.0, 60.0)
    env.clock.advance(10.0)
    assert env.pool().expire_waiters(env.clock()) == [fast]
    assert state_of(fast) is WaitState.TIMED_OUT and state_of(slow) is WaitState.WAITING
    assert log.requesters["i"].timeouts == 1


def test_cancel_and_mark_timed_out_leave_other_lanes_in_turn() -> None:
    env, log = busy_env(ranked("only")), Log()
    a1 = log.wait(env, "a1", key="A")
    log.wait(env, "b1", key="B")
    a2 = log.wait(env, "a2", key="A")
    log.wait(env, "c1", key="C")
    pool = env.pool()
    assert pool.cancel(a1) and not pool.cancel(a1)
    assert pool.mark_timed_out(a2) and not pool.mark_timed_out(a2)
    assert drain(env, log) == ["b1", "c1"]
    assert pool.queue.restricted == 0 and len(pool.queue) == 0


def test_without_priority_band_and_key_are_ignored_and_the_queue_stays_one_fifo() -> None:
    env, log = busy_env(PoolSpec("p", ("m",))), Log()
    log.wait(env, "1", band="interactive", key="A")
    log.wait(env, "2", band=0, key="B")
    queue = env.pool().queue
    assert queue.restricted == 0 and len(queue.unrestricted) == 2
    assert drain(env, log) == ["1", "2"]


def test_plain_enqueue_in_a_pool_with_bands_waits_in_the_default_band() -> None:
    env, log = busy_env(ranked("interactive", "batch", max_waiting=1)), Log()
    plain = env.pool().enqueue(Ask("plain"), Requester().on_grant)
    assert env.pool().queue.band_len(BATCH) == 1
    log.wait(env, "i", "interactive")
    assert state_of(plain) is WaitState.DISPLACED  # no on_displaced: nobody to tell
    assert [w.request_id for w in env.pool().queue] == ["i"]


def test_the_default_lane_stays_the_plain_fifo() -> None:
    # The default band's requests without a key take the hot path: no lane bookkeeping.
    env, log = busy_env(ranked("interactive", "batch")), Log()
    log.wait(env, "b1")
    log.wait(env, "b2", "batch")
    queue = env.pool().queue
    assert queue.restricted == 0 and list(queue.unrestricted) == [
        w for w in queue if w.request_id in ("b1", "b2")
    ]
    log.wait(env, "i1", "interactive")
    assert queue.restricted == 1
    assert drain(env, log) == ["i1", "b1", "b2"]


def test_new_bands_rebuild_the_queue_keeping_waiters_by_band_name() -> None:
    env, log = busy_env(ranked("interactive", "batch")), Log()
    log.wait(env, "b1", "batch")
    log.wait(env, "i1", "interactive", key="T")
    log.wait(env, "b2", "batch", key="T")
    env.registry.configure([ranked("batch", "urgent", "interactive", default=0)])
    log.wait(env, "u1", "urgent")  # the first ranked call rebuilds the queue
    queue = env.pool().queue
    assert queue.bands == 3 and len(queue) == 4
    assert drain(env, log) == ["b1", "b2", "u1", "i1"]


def test_wait_queue_serves_bands_then_turns_then_arrival() -> None:
    q = WaitQueue(bands=2, default=1)
    grant: Callable[[Lease], bool] = lambda lease: True  # noqa: E731

    def w(name: str, lane: tuple[int, str] | None, *eligible: str) -> Waiter:
        subset = frozenset(eligible) if eligible else None
        waiter = Waiter(name, 0, 1, grant, None, subset, lane)
        q.push(waiter)
        return waiter

    plain = w("plain", None)
    x1 = w("x1", (1, "x"))
    top_b = w("top-b", (0, ""), "b")
    x2 = w("x2", (1, "x"))
    assert (len(q), q.restricted, q.band_len(0), q.band_len(1)) == (4, 3, 1, 3)
    assert list(q) == [plain, x1, top_b, x2]
    assert q.head() is top_b
    assert q.select(["a"]) is plain
    assert q.newest_below(0) is x2 and q.newest_below(1) is None
    assert q.take(top_b) and not q.remove(top_b)
    assert q.pop() is plain and q.pop() is x1 and q.pop() is x2
    assert len(q) == 0 and q.restricted == 0 and q.head() is None
    with pytest.raises(ValueError, match="default band"):
        WaitQueue(bands=1, default=1)


# -- the state machine ---------------------------------------------------------------------------

ADDRESSES = ("a", "b", "c")
SUBSETS = (None, None, frozenset({"a"}), frozenset({"b", "c"}))
KEYS = ("", "x", "y")
BANDS = (
    BandSpec("interactive", max_waiting=4, queue_timeout=3.0),
    BandSpec("standard", max_waiting=6, queue_timeout=6.0),
    BandSpec("batch", max_waiting=8, queue_timeout=9.0),
)


class PriorityMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        spec = PoolSpec("p", ("m",), max_waiting=10, priority=PrioritySpec(BANDS, default=2))
        self.env = make_env(spec)
        self.waiting: dict[str, Waiter] = {}
        self.leases: list[Lease] = []
        self.left: dict[str, WaitState] = {}  # request id -> how it left WAITING
        self.n = 0
        # Per lane X with a waiter any replica may serve: grants to each other lane of its
        # band since X last had its turn (or since it got such a waiter).
        self.since: dict[tuple[int, str], dict[tuple[int, str], int]] = {}
        self.violations: list[str] = []

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        return self.env.pool()

    def _band_key(self, w: Waiter) -> tuple[int, str]:
        return (2, "") if w.lane is None else w.lane

    def _usable(self, w: Waiter, address: str) -> bool:
        return w.eligible is None or address in w.eligible

    def _check_grant(self, granted: Waiter, address: str) -> None:
        """Runs inside on_grant: ``granted`` has left the queue, the rest is still there."""
        band, key = self._band_key(granted)
        for w in self.pool.queue:
            wb, wk = self._band_key(w)
            if wb < band and self._usable(w, address):
                self.violations.append(f"{granted} served on {address} before {w}")
            if (wb, wk) == (band, key) and w.seq < granted.seq and self._usable(w, address):
                self.violations.append(f"{granted} overtook {w} in its lane")
        lane = (band, key)
        self.since.pop(lane, None)
        for other, counts in self.since.items():
            if other[0] == band and other != lane:
                counts[lane] = counts.get(lane, 0) + 1
                if counts[lane] > 1:
                    self.violations.append(f"lane {lane} served twice while {other} waited")

    def _check_fits(self, lease: Lease) -> None:
        capacity = lease.replica.capacity
        if capacity.leased + lease.replica.external > capacity.slots:
            self.violations.append(f"{lease.address} overbooked by {lease.request_id}")

    def _refresh_since(self) -> None:
        plain = {self._band_key(w) for w in self.pool.queue if w.eligible is None}
        for lane in list(self.since):
            if lane not in plain:
                del self.since[lane]
        for lane in plain:
            self.since.setdefault(lane, {})

    def _on_grant(self, waiter_box: list[Waiter], alive: bool) -> Callable[[Lease], bool]:
        def on_grant(lease: Lease) -> bool:
            w = waiter_box[0]
            self._check_grant(w, lease.address)
            self._check_fits(lease)
            if alive:
                self.leases.append(lease)
                self._leave(w.request_id, WaitState.GRANTED)
            else:
                self._leave(w.request_id, WaitState.CANCELLED)
            return alive

        return on_grant

    def _leave(self, request_id: str, how: WaitState) -> None:
        assert request_id not in self.left, f"{request_id} left WAITING twice"
        self.left[request_id] = how
        self.waiting.pop(request_id, None)

    @rule(address=st.sampled_from(ADDRESSES), slots=st.integers(1, 2), warm=st.booleans())
    def upsert(self, address: str, slots: int, warm: bool) -> None:
        phase = Phase.WARM if warm else Phase.LOADING
        self.env.registry.apply(ReplicaUpsert("p", address, slots, phase))
        self._refresh_since()

    @rule(
        band=st.integers(0, 2),
        key=st.sampled_from(KEYS),
        eligible=st.sampled_from(SUBSETS),
        alive=st.sampled_from([True, True, True, False]),
    )
    def arrive(self, band: int, key: str, eligible: frozenset[str] | None, alive: bool) -> None:
        self.n += 1
        request_id = f"r{self.n}"
        pool = self.pool
        queued = list(pool.queue)
        lease = pool.try_acquire(Ask(request_id, eligible=eligible))
        if lease is not None:
            assert not any(self._usable(w, lease.address) for w in queued), "overtook a waiter"
            self._check_fits(lease)
            self.leases.append(lease)
            return
        full = len(pool.queue) >= 10
        band_full = pool.queue.band_len(band) >= BANDS[band].max_waiting
        lower = [w for w in queued if self._band_key(w)[0] > band]
        victim = None
        if full and not band_full and lower:
            lowest = max(self._band_key(w)[0] for w in lower)
            victim = max((w for w in lower if self._band_key(w)[0] == lowest), key=lambda w: w.seq)
        box: list[Waiter] = []
        try:
            waiter = pool.enqueue(
                Ask(request_id, eligible=eligible, band=band, key=key),
                self._on_grant(box, alive),
                on_timeout=lambda: None,
                on_displaced=lambda: self._leave(request_id, WaitState.DISPLACED),
            )
        except QueueFull:
            assert band_full or (full and victim is None), "refused with room"
            return
        assert not band_full and (not full or victim is not None)
        if victim is not None:
            assert state_of(victim) is WaitState.DISPLACED
            assert self.left[victim.request_id] is WaitState.DISPLACED
        box.append(waiter)
        if waiter.state is WaitState.WAITING:
            self.waiting[request_id] = waiter
        self._refresh_since()

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        assert lease.release()
        self._refresh_since()

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), timer=st.booleans())
    def withdraw(self, data: st.DataObject, timer: bool) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.waiting)))
        w = self.waiting[request_id]
        if timer:
            assert self.pool.mark_timed_out(w)
            self._leave(request_id, WaitState.TIMED_OUT)
        else:
            assert self.pool.cancel(w)
            self._leave(request_id, WaitState.CANCELLED)
        self._refresh_since()

    @rule(seconds=st.sampled_from([1.0, 4.0]))
    def tick(self, seconds: float) -> None:
        self.env.clock.advance(seconds)
        for w in self.pool.expire_waiters(self.env.clock()):
            assert w.deadline <= self.env.clock()
            self._leave(w.request_id, WaitState.TIMED_OUT)
        self._refresh_since()

    @invariant()
    def nothing_was_out_of_order(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def work_is_conserved(self) -> None:
        for r in self.pool.replicas.values():
            free = r.phase is Phase.WARM and r.capacity.leased + r.external < r.capacity.slots
            if free:
                users = [w for w in self.pool.queue if self._usable(w, r.address)]
                assert not users, f"{r.address} is free while {users} wait"

    @invariant()
    def leases_fit_the_slots(self) -> None:
        # Slots may shrink under running leases; at grant time they never overbook (below).
        for r in self.pool.replicas.values():
            assert r.in_flight == sum(1 for lease in self.leases if lease.replica is r)

    @invariant()
    def the_queue_is_what_waits_within_its_bounds(self) -> None:
        queue = self.pool.queue
        assert {w.request_id for w in queue} == set(self.waiting)
        assert all(w.state is WaitState.WAITING for w in queue)
        assert len(queue) <= 10
        for band, spec in enumerate(BANDS):
            assert queue.band_len(band) <= spec.max_waiting
            assert queue.band_len(band) == sum(1 for w in queue if self._band_key(w)[0] == band)
        seqs = [w.seq for w in queue]
        assert seqs == sorted(seqs)
        assert self.pool.counters.displaced == sum(
            1 for how in self.left.values() if how is WaitState.DISPLACED
        )


PriorityMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
TestPriorityMachine = PriorityMachine.TestCase
