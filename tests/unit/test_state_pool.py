"""Unit tests of the leasing core: Pool and Registry, with a fake clock and no sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from warmroute.errors import QueueFull
from warmroute.state import (
    EndReason,
    Lease,
    Phase,
    Pool,
    PoolSpec,
    Registry,
    ReplicaExternalLoad,
    ReplicaRemoved,
    ReplicaUpsert,
    Waiter,
    WaitState,
)
from warmroute.state.ask import Ask


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ids:
    """Deterministic lease ids: lease-1, lease-2, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"lease-{self.n}"


@dataclass
class Requester:
    """Stands in for the adapter side of one waiting request."""

    alive: bool = True
    offered: list[Lease] = field(default_factory=list)
    timeouts: int = 0

    def on_grant(self, lease: Lease) -> bool:
        self.offered.append(lease)
        return self.alive

    def on_timeout(self) -> None:
        self.timeouts += 1


@dataclass
class Env:
    registry: Registry
    clock: FakeClock

    def pool(self, name: str = "p") -> Pool:
        return self.registry.pools[name]

    def warm(self, address: str, slots: int = 1, pool: str = "p") -> None:
        self.registry.apply(ReplicaUpsert(pool, address, slots, Phase.WARM))

    def acquire(self, request_id: str = "req", pool: str = "p") -> Lease:
        lease = self.pool(pool).try_acquire(Ask(request_id))
        assert lease is not None, f"no lease for {request_id}"
        return lease

    def wait(
        self, request_id: str, requester: Requester, pool: str = "p", timeout: float | None = None
    ) -> Waiter:
        return self.pool(pool).enqueue(
            Ask(request_id), requester.on_grant, timeout=timeout, on_timeout=requester.on_timeout
        )


def state_of(waiter: Waiter) -> WaitState:
    """The waiter's state, read fresh (a plain attribute read would stay narrowed for mypy)."""
    return waiter.state


def make_env(*specs: PoolSpec, now: float = 0.0) -> Env:
    clock = FakeClock(now)
    registry = Registry(clock=clock, new_id=Ids())
    registry.configure(specs or (PoolSpec("p", ("m",)),))
    return Env(registry, clock)


# -- picking a replica -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "external", "expected"),
    [
        pytest.param([("a", 1), ("b", 1), ("c", 1)], {}, ["a", "b", "c"], id="single-slot"),
        pytest.param([("a", 4), ("b", 2)], {}, ["a", "b", "a", "b", "a", "a"], id="by-ratio"),
        pytest.param([("a", 2), ("b", 2)], {"a": 1}, ["b", "a", "b"], id="external-counts"),
        pytest.param([("a", 1), ("b", 3)], {"b": 3}, ["a"], id="external-full"),
    ],
)
def test_immediate_acquire_picks_least_loaded_then_least_recently_used(
    replicas: list[tuple[str, int]], external: dict[str, int], expected: list[str]
) -> None:
    env = make_env()
    for address, slots in replicas:
        env.warm(address, slots)
    for address, running in external.items():
        env.registry.apply(ReplicaExternalLoad("p", address, running))
    got = []
    for i in range(len(expected)):
        env.clock.advance(1.0)
        got.append(env.acquire(f"r{i}").address)
    assert got == expected
    assert env.pool().try_acquire(Ask("one-too-many")) is None


def test_idle_replicas_are_picked_least_recently_used_first() -> None:
    env = make_env()
    for address in ("a", "b", "c"):
        env.warm(address)
    leases = {}
    for address in ("a", "b", "c"):
        env.clock.advance(1.0)
        lease = env.acquire()
        assert lease.address == address
        leases[address] = lease
    for address in ("c", "a", "b"):  # c freed longest ago, then a, then b
        env.clock.advance(1.0)
        assert leases[address].release()
    env.clock.advance(1.0)
    assert [env.acquire(f"r{i}").address for i in range(3)] == ["c", "a", "b"]


def test_first_free_policy_packs_work() -> None:
    env = make_env(PoolSpec("p", ("m",), policy="first_free"))
    env.warm("a", 2)
    env.warm("b", 2)
    assert [env.acquire(f"r{i}").address for i in range(4)] == ["a", "a", "b", "b"]


def test_grant_sets_lease_fields_and_indexes_it() -> None:
    spec = PoolSpec("p", ("m",), max_request_seconds=60.0, lease_grace_seconds=5.0)
    env = make_env(spec, now=100.0)
    env.warm("10.0.0.1:8000")
    lease = env.acquire("req-1")
    assert lease.id == "lease-1"
    assert lease.request_id == "req-1"
    assert lease.pool is env.pool()
    assert lease.address == "10.0.0.1:8000"
    # Envoy's route timeout starts after the grant, so the lease outlives it by the grace.
    assert (lease.acquired_at, lease.deadline) == (100.0, 165.0)
    assert lease.ended is None
    assert env.registry.lease("lease-1") is lease
    assert env.pool().active_leases() == [lease]
    replica = env.pool().replicas["10.0.0.1:8000"]
    assert (replica.in_flight, replica.leased_total, replica.last_used) == (1, 1, 100.0)
    assert env.pool().counters.granted_immediately == 1


# -- waiting ---------------------------------------------------------------------------------


def test_no_replica_means_wait() -> None:
    env = make_env()
    assert env.pool().try_acquire(Ask("req")) is None
    requester = Requester()
    waiter = env.wait("req", requester)
    assert waiter.state is WaitState.WAITING
    assert requester.offered == []
    env.warm("a")
    assert state_of(waiter) is WaitState.GRANTED
    assert requester.offered == [waiter.lease]


def test_waiters_are_served_fifo_and_never_overtaken() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire("first")
    requesters = {name: Requester() for name in ("w1", "w2", "w3")}
    waiters = {name: env.wait(name, r) for name, r in requesters.items()}
    assert env.pool().try_acquire(Ask("late")) is None
    order = []
    lease = held
    for _ in range(3):
        assert lease.release()
        granted = [n for n, w in waiters.items() if w.state is WaitState.GRANTED]
        newest = next(n for n in granted if n not in order)
        order.append(newest)
        # The slot went to the waiter, so a newcomer still finds nothing.
        assert env.pool().try_acquire(Ask("late")) is None
        found = waiters[newest].lease
        assert found is not None
        lease = found
    assert order == ["w1", "w2", "w3"]
    assert [r.offered[0].request_id for r in requesters.values()] == ["w1", "w2", "w3"]
    assert lease.release()
    assert env.acquire("late").request_id == "late"
    assert env.pool().counters.granted_after_wait == 3


def test_enqueue_beyond_max_waiting_raises_queue_full_and_counts_it() -> None:
    env = make_env(PoolSpec("p", ("m",), max_waiting=2))
    first = env.wait("w1", Requester())
    env.wait("w2", Requester())
    with pytest.raises(QueueFull) as info:
        env.wait("w3", Requester())
    assert info.value.code == "queue_full"
    assert info.value.http_status == 429
    assert len(env.pool().queue) == 2
    assert env.pool().counters.rejected_queue_full == 1
    assert env.registry.view().pools[0].rejected_queue_full == 1
    # Room again once someone leaves.
    assert env.pool().cancel(first)
    env.wait("w3", Requester())
    assert len(env.pool().queue) == 2
    assert env.pool().counters.rejected_queue_full == 1


def test_max_waiting_zero_refuses_every_wait() -> None:
    env = make_env(PoolSpec("p", ("m",), max_waiting=0))
    with pytest.raises(QueueFull):
        env.wait("w1", Requester())
    assert env.pool().counters.rejected_queue_full == 1


def test_release_hands_the_slot_to_the_oldest_waiter_inside_the_call() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire("held")
    old, young = Requester(), Requester()
    w_old = env.wait("old", old)
    w_young = env.wait("young", young)

    assert held.release()

    # Push, not poll: by the time release() returns, the waiter has its lease.
    assert len(old.offered) == 1
    granted = old.offered[0]
    assert w_old.state is WaitState.GRANTED
    assert w_old.lease is granted
    assert granted.request_id == "old"
    assert granted.replica is held.replica
    assert granted.replica.in_flight == 1
    assert env.registry.leases == {granted.id: granted}
    assert w_young.state is WaitState.WAITING
    assert young.offered == []
    assert list(env.pool().queue) == [w_young]
    c = env.pool().counters
    assert (c.granted_immediately, c.granted_after_wait, c.released) == (1, 1, 1)


def test_enqueue_with_a_free_slot_grants_at_once() -> None:
    env = make_env()
    env.warm("a")
    requester = Requester()
    waiter = env.wait("req", requester)
    assert waiter.state is WaitState.GRANTED
    assert requester.offered == [waiter.lease]
    assert len(env.pool().queue) == 0


def test_refused_grant_passes_the_slot_to_the_next_waiter() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire("held")
    gone, live = Requester(alive=False), Requester()
    w_gone = env.wait("gone", gone)
    w_live = env.wait("live", live)
    replica = held.replica

    assert held.release()

    assert len(gone.offered) == 1
    refused = gone.offered[0]
    assert w_gone.state is WaitState.CANCELLED
    assert w_gone.lease is None
    assert refused.ended is EndReason.CANCELLED
    assert refused.id not in env.registry.leases
    assert w_live.state is WaitState.GRANTED
    assert live.offered == [w_live.lease]
    assert w_live.lease is not None
    assert w_live.lease.replica is replica
    assert replica.in_flight == 1
    assert replica.leased_total == 2  # held + live; the refused grant is undone
    assert env.registry.leases == {w_live.lease.id: w_live.lease}
    c = env.pool().counters
    assert (c.waits_cancelled, c.granted_after_wait, c.released) == (1, 1, 1)

    # The refused lease cannot be released: it never counted.
    assert not refused.release()
    assert replica.in_flight == 1
    assert c.released == 1


def test_all_waiters_gone_leaves_the_slot_free() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire("held")
    waiters = [env.wait(f"gone{i}", Requester(alive=False)) for i in range(3)]
    assert held.release()
    assert all(w.state is WaitState.CANCELLED for w in waiters)
    assert len(env.pool().queue) == 0
    assert held.replica.in_flight == 0
    assert held.replica.free == 1
    assert env.registry.leases == {}
    assert env.acquire("next").address == "a"


def test_release_twice_frees_once() -> None:
    env = make_env()
    env.warm("a")
    lease = env.acquire()
    first, second = Requester(), Requester()
    w1 = env.wait("w1", first)
    w2 = env.wait("w2", second)

    assert lease.release() is True
    assert lease.release() is False
    assert env.pool().release(lease, EndReason.CANCELLED) is False

    assert lease.ended is EndReason.FINISHED
    assert w1.state is WaitState.GRANTED
    assert w2.state is WaitState.WAITING  # the second release did not free a phantom slot
    assert lease.replica.in_flight == 1
    c = env.pool().counters
    assert c.released == 1
    assert c.ended == {"finished": 1}


def test_release_through_another_pool_is_refused() -> None:
    env = make_env(PoolSpec("p", ("m",)), PoolSpec("q", ("n",)))
    env.warm("a")
    lease = env.acquire()
    assert env.pool("q").release(lease) is False
    assert lease.ended is None
    assert lease.replica.in_flight == 1


@pytest.mark.parametrize(
    ("reason", "counter"),
    [
        (EndReason.FINISHED, None),
        (EndReason.CANCELLED, "cancelled_leases"),
        (EndReason.EXPIRED, "expired"),
        (EndReason.REVOKED, None),
    ],
)
def test_end_reasons_are_counted(reason: EndReason, counter: str | None) -> None:
    env = make_env()
    env.warm("a")
    lease = env.acquire()
    assert lease.release(reason)
    c = env.pool().counters
    assert lease.ended is reason
    assert c.released == 1
    assert c.ended == {reason.value: 1}
    assert c.expired == (1 if counter == "expired" else 0)
    assert c.cancelled_leases == (1 if counter == "cancelled_leases" else 0)


def test_cancelled_waiter_never_gets_a_lease() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire()
    quitter, stayer = Requester(), Requester()
    w_quit = env.wait("quit", quitter)
    w_stay = env.wait("stay", stayer)

    assert env.pool().cancel(w_quit) is True
    assert env.pool().cancel(w_quit) is False
    assert w_quit.state is WaitState.CANCELLED
    assert list(env.pool().queue) == [w_stay]
    assert env.pool().counters.waits_cancelled == 1

    assert held.release()
    assert quitter.offered == []
    assert w_quit.lease is None
    assert w_stay.state is WaitState.GRANTED
    # A granted waiter can no longer be cancelled.
    assert env.pool().cancel(w_stay) is False
    assert w_stay.state is WaitState.GRANTED
    assert env.pool().counters.waits_cancelled == 1


# -- time ------------------------------------------------------------------------------------


def test_expire_reclaims_leases_at_their_deadline() -> None:
    env = make_env(
        PoolSpec(
            "p", ("m",), max_request_seconds=10.0, lease_grace_seconds=2.0, queue_timeout=100.0
        )
    )
    env.warm("a")
    lease = env.acquire("stuck")
    requester = Requester()
    waiter = env.wait("next", requester)

    env.clock.now = 11.999
    assert env.registry.expire() == []
    assert lease.ended is None

    env.clock.now = 12.0
    assert env.registry.expire() == [lease]
    assert lease.ended is EndReason.EXPIRED
    assert lease.id not in env.registry.leases
    c = env.pool().counters
    assert (c.expired, c.released) == (1, 1)
    assert c.ended == {"expired": 1}
    # The reclaimed slot went to the waiter, whose lease gets a fresh deadline.
    assert waiter.state is WaitState.GRANTED
    assert waiter.lease is not None
    assert waiter.lease.deadline == 24.0
    assert lease.replica.in_flight == 1
    assert not lease.release()
    assert env.registry.expire() == []


def test_expire_times_out_waiters_once() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0))
    early, custom, late = Requester(), Requester(), Requester()
    w_early = env.wait("early", early)
    w_custom = env.wait("custom", custom, timeout=1.0)
    env.clock.advance(2.0)
    w_late = env.wait("late", late)

    assert env.registry.expire() == []
    assert w_custom.state is WaitState.TIMED_OUT
    assert (early.timeouts, custom.timeouts, late.timeouts) == (0, 1, 0)

    env.clock.advance(3.0)  # t=5: early's deadline, not late's (t=7)
    env.registry.expire()
    assert w_early.state is WaitState.TIMED_OUT
    assert w_late.state is WaitState.WAITING
    env.registry.expire()
    assert (early.timeouts, custom.timeouts, late.timeouts) == (1, 1, 0)
    assert list(env.pool().queue) == [w_late]
    assert env.pool().counters.waits_timed_out == 2

    # A timed-out waiter is never granted a slot.
    env.warm("a")
    assert state_of(w_late) is WaitState.GRANTED
    assert early.offered == [] and custom.offered == []
    assert env.pool().cancel(w_early) is False


def test_expire_waiters_returns_the_timed_out() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0))
    waiters = [env.wait(f"w{i}", Requester()) for i in range(3)]
    env.clock.advance(5.0)
    assert env.pool().expire_waiters(env.clock()) == waiters
    assert env.pool().expire_waiters(env.clock()) == []


def test_mark_timed_out_is_once_and_does_not_call_on_timeout() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire()
    requester = Requester()
    waiter = env.wait("w", requester)
    assert env.pool().mark_timed_out(waiter) is True
    assert env.pool().mark_timed_out(waiter) is False
    assert env.pool().cancel(waiter) is False
    assert waiter.state is WaitState.TIMED_OUT
    assert requester.timeouts == 0  # the adapter's own timer fired; no callback
    assert env.pool().counters.waits_timed_out == 1
    assert held.release()
    assert requester.offered == []
    assert held.replica.free == 1


# -- replica phases and membership -----------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.LOADING, Phase.DRAINING, Phase.GONE])
def test_replicas_that_are_not_warm_get_no_leases(phase: Phase) -> None:
    env = make_env()
    env.registry.apply(ReplicaUpsert("p", "a", 2, phase))
    replica = env.pool().replicas["a"]
    assert replica.free == 0
    assert env.pool().try_acquire(Ask("req")) is None
    requester = Requester()
    waiter = env.wait("req", requester)
    assert waiter.state is WaitState.WAITING
    assert replica.in_flight == 0


@pytest.mark.parametrize("before", [Phase.LOADING, Phase.DRAINING])
def test_turning_warm_dispatches_waiters_at_once(before: Phase) -> None:
    env = make_env()
    env.registry.apply(ReplicaUpsert("p", "a", 2, before))
    requesters = [Requester() for _ in range(3)]
    waiters = [env.wait(f"w{i}", r) for i, r in enumerate(requesters)]
    env.registry.apply(ReplicaUpsert("p", "a", 2, Phase.WARM))
    assert [w.state for w in waiters] == [
        WaitState.GRANTED,
        WaitState.GRANTED,
        WaitState.WAITING,
    ]
    assert env.pool().replicas["a"].in_flight == 2


def test_draining_replica_finishes_leases_but_takes_no_waiters() -> None:
    env = make_env()
    env.warm("a")
    lease = env.acquire()
    waiter = env.wait("w", Requester())
    env.registry.apply(ReplicaUpsert("p", "a", 1, Phase.DRAINING))
    assert lease.release()
    assert waiter.state is WaitState.WAITING
    assert lease.replica.in_flight == 0
    assert "a" in env.pool().replicas


def test_removing_a_busy_replica_keeps_it_until_its_last_lease_ends() -> None:
    env = make_env()
    env.warm("a", 2)
    first, second = env.acquire("r1"), env.acquire("r2")
    waiter = env.wait("w", Requester())
    env.registry.apply(ReplicaRemoved("p", "a"))

    replica = env.pool().replicas["a"]
    assert replica.phase is Phase.GONE
    assert replica.free == 0
    assert first.release()
    assert env.pool().replicas.get("a") is replica
    assert waiter.state is WaitState.WAITING  # a gone replica's slot is not reused
    assert second.release()
    assert "a" not in env.pool().replicas
    assert env.registry.view().pools[0].replicas == ()
    assert env.registry.leases == {}


def test_removing_an_idle_replica_forgets_it_at_once() -> None:
    env = make_env()
    env.warm("a")
    env.registry.apply(ReplicaRemoved("p", "a"))
    assert env.pool().replicas == {}
    env.registry.apply(ReplicaRemoved("p", "a"))  # unknown address: ignored
    env.registry.apply(ReplicaRemoved("p", "nope"))
    assert env.pool().replicas == {}


def test_a_removed_replica_that_comes_back_keeps_its_leases() -> None:
    env = make_env()
    env.warm("a", 2)
    lease = env.acquire()
    env.registry.apply(ReplicaRemoved("p", "a"))
    env.warm("a", 2)
    replica = env.pool().replicas["a"]
    assert replica is lease.replica
    assert (replica.phase, replica.in_flight, replica.free) == (Phase.WARM, 1, 1)
    assert lease.release()
    assert env.pool().replicas["a"] is replica  # warm again, so not forgotten


def test_a_replica_readded_after_being_forgotten_is_fresh() -> None:
    env = make_env()
    env.warm("a", 2)
    lease = env.acquire()
    env.registry.apply(ReplicaRemoved("p", "a"))
    assert lease.release()
    assert "a" not in env.pool().replicas
    env.warm("a", 2)
    replica = env.pool().replicas["a"]
    assert replica is not lease.replica
    assert (replica.in_flight, replica.leased_total, replica.free) == (0, 0, 2)


def test_multi_slot_replica_never_exceeds_its_slots() -> None:
    env = make_env(PoolSpec("p", ("m",), max_waiting=100))
    env.warm("a", 3)
    replica = env.pool().replicas["a"]
    seen: list[int] = []

    def on_grant(lease: Lease) -> bool:
        seen.append(lease.replica.in_flight)
        granted.append(lease)
        return True

    granted: list[Lease] = [env.acquire(f"r{i}") for i in range(3)]
    assert env.pool().try_acquire(Ask("r3")) is None
    for i in range(5):
        env.pool().enqueue(Ask(f"w{i}"), on_grant)
    assert replica.in_flight == 3
    while granted:
        lease = granted.pop(0)
        assert lease.release()
        assert replica.in_flight <= replica.slots
    assert seen and max(seen) <= 3
    assert replica.in_flight == 0
    assert replica.leased_total == 8


def test_shrinking_slots_holds_back_waiters_until_below_the_new_size() -> None:
    env = make_env()
    env.warm("a", 3)
    leases = [env.acquire(f"r{i}") for i in range(3)]
    waiter = env.wait("w", Requester())
    env.warm("a", 1)
    replica = env.pool().replicas["a"]
    assert leases[0].release()
    assert leases[1].release()
    assert waiter.state is WaitState.WAITING
    assert replica.free == 0
    assert leases[2].release()
    assert state_of(waiter) is WaitState.GRANTED
    assert replica.in_flight == 1


def test_growing_slots_dispatches_waiters() -> None:
    env = make_env()
    env.warm("a", 1)
    env.acquire()
    waiters = [env.wait(f"w{i}", Requester()) for i in range(2)]
    env.warm("a", 3)
    assert all(w.state is WaitState.GRANTED for w in waiters)


def test_external_load_reduces_free_slots() -> None:
    env = make_env()
    env.warm("a", 3)
    replica = env.pool().replicas["a"]
    env.registry.apply(ReplicaExternalLoad("p", "a", 2))
    assert (replica.external, replica.free) == (2, 1)
    env.acquire("r1")
    assert env.pool().try_acquire(Ask("r2")) is None
    waiter = env.wait("w", Requester())
    # ``running`` counts everything the replica runs, our own lease included.
    env.registry.apply(ReplicaExternalLoad("p", "a", 2))
    assert replica.external == 1
    assert waiter.state is WaitState.GRANTED
    assert replica.in_flight == 2
    env.registry.apply(ReplicaExternalLoad("p", "a", 0))
    assert (replica.external, replica.free) == (0, 1)
    env.registry.apply(ReplicaExternalLoad("p", "nope", 5))  # unknown address: ignored
    env.registry.apply(ReplicaExternalLoad("other", "a", 5))  # unknown pool: ignored
    assert replica.external == 0


# -- registry --------------------------------------------------------------------------------


def test_configure_adds_updates_and_removes_pools() -> None:
    env = make_env(
        PoolSpec("chat", ("llama", "mistral"), max_waiting=5),
        PoolSpec("embed", ("bge",)),
    )
    reg = env.registry
    chat, embed = reg.pools["chat"], reg.pools["embed"]
    assert reg.pool_for_model("llama") is chat
    assert reg.pool_for_model("mistral") is chat
    assert reg.pool_for_model("bge") is embed
    assert reg.pool_for_model("gpt") is None
    env.warm("e1", pool="embed")
    embed_lease = env.acquire(pool="embed")
    env.warm("c1", 2, pool="chat")
    env.warm("c2", 2, pool="chat")

    reg.configure(
        [
            PoolSpec("chat", ("llama",), max_waiting=9, policy="first_free"),
            PoolSpec("image", ("sdxl",)),
        ]
    )
    assert set(reg.pools) == {"chat", "image"}
    assert reg.pools["chat"] is chat  # updated in place: replicas and leases survive
    assert chat.spec.max_waiting == 9
    assert set(chat.replicas) == {"c1", "c2"}
    assert reg.pool_for_model("llama") is chat
    assert reg.pool_for_model("mistral") is None
    assert reg.pool_for_model("bge") is None
    assert reg.pool_for_model("sdxl") is reg.pools["image"]
    # The new policy applies: first_free packs c1 before touching c2.
    assert [env.acquire(f"r{i}", pool="chat").address for i in range(3)] == ["c1", "c1", "c2"]
    # A dropped pool's lease lives on until it ends; its events are ignored.
    reg.apply(ReplicaUpsert("embed", "e2", 1, Phase.WARM))
    assert "e2" not in embed.replicas
    assert embed_lease.id in reg.leases
    assert embed_lease.release()
    assert embed_lease.id not in reg.leases


def test_configure_with_nothing_drops_every_pool() -> None:
    env = make_env()
    env.registry.configure([])
    assert env.registry.pools == {}
    assert env.registry.pool_for_model("m") is None
    assert env.registry.view().pools == ()


def test_view_numbers_match_the_state() -> None:
    env = make_env(
        PoolSpec("p", ("m1", "m2"), max_waiting=2, queue_timeout=5.0),
        PoolSpec("q", ("n",)),
    )
    env.warm("b", 2)
    env.warm("a", 1)
    env.registry.apply(ReplicaUpsert("p", "c", 4, Phase.LOADING))
    env.registry.apply(ReplicaExternalLoad("p", "b", 1))
    held = env.acquire("r1")  # a (b is half busy with external load)
    env.acquire("r2")  # b
    cancelling = env.wait("w-cancel", Requester())
    env.wait("w-time", Requester(), timeout=1.0)
    with pytest.raises(QueueFull):
        env.wait("w-full", Requester())
    assert env.pool().cancel(cancelling)
    env.clock.advance(1.0)
    env.registry.expire()
    env.wait("w-grant", Requester())
    assert held.release()

    view = env.registry.view()
    assert view.leases == len(env.registry.leases) == 2
    assert [p.name for p in view.pools] == ["p", "q"]
    p, q = view.pools
    assert p.models == ("m1", "m2")
    rows = [
        (r.address, r.phase, r.slots, r.in_flight, r.external, r.leased_total) for r in p.replicas
    ]
    assert rows == [
        ("a", "warm", 1, 1, 0, 2),
        ("b", "warm", 2, 1, 1, 1),
        ("c", "loading", 4, 0, 0, 0),
    ]
    assert p.in_flight == 2
    assert (p.waiting, p.max_waiting) == (0, 2)
    assert (p.granted_immediately, p.granted_after_wait) == (2, 1)
    assert (p.expired, p.rejected_queue_full, p.waits_timed_out, p.waits_cancelled) == (
        0,
        1,
        1,
        1,
    )
    assert (q.replicas, q.waiting, q.in_flight) == ((), 0, 0)
    data = view.to_json()
    assert data["leases"] == 2
    assert data["pools"][0]["replicas"][0]["address"] == "a"


def test_default_lease_ids_are_unguessable() -> None:
    registry = Registry(clock=FakeClock())
    registry.configure([PoolSpec("p", ("m",))])
    registry.apply(ReplicaUpsert("p", "a", 2, Phase.WARM))
    pool = registry.pools["p"]
    ids = {
        lease.id for lease in (pool.try_acquire(Ask("r1")), pool.try_acquire(Ask("r2"))) if lease
    }
    assert len(ids) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# -- regressions: bugs found while writing these tests -------------------------------------


def test_expire_times_out_waiters_of_a_dropped_pool() -> None:
    env = make_env(PoolSpec("p", ("m",), queue_timeout=5.0), PoolSpec("q", ("n",)))
    requester = Requester()
    waiter = env.wait("w", requester)
    env.registry.configure([PoolSpec("q", ("n",))])
    env.clock.advance(10.0)
    env.registry.expire()
    assert waiter.state is WaitState.TIMED_OUT
    assert requester.timeouts == 1


def test_expire_does_not_grant_to_a_waiter_past_its_deadline() -> None:
    env = make_env(
        PoolSpec("p", ("m",), queue_timeout=5.0, max_request_seconds=10.0, lease_grace_seconds=0)
    )
    env.warm("a")
    env.acquire("stuck")
    requester = Requester()
    waiter = env.wait("w", requester)
    env.clock.advance(20.0)
    env.registry.expire()
    assert waiter.state is WaitState.TIMED_OUT
    assert requester.offered == []
    assert requester.timeouts == 1


def test_cancel_through_the_wrong_pool_is_refused() -> None:
    env = make_env()
    env.warm("a")
    held = env.acquire()
    requester = Requester()
    waiter = env.wait("w", requester)
    old_pool = env.pool()
    # A config reload drops the pool and adds it back: a new Pool object by the same name.
    env.registry.configure([])
    env.registry.configure([PoolSpec("p", ("m",))])
    assert env.registry.pools["p"] is not old_pool
    cancelled = env.registry.pools["p"].cancel(waiter)
    assert held.release()
    # Either the cancel is refused (and the waiter is served), or it really cancels.
    assert (cancelled, waiter.state) in {
        (False, WaitState.GRANTED),
        (True, WaitState.CANCELLED),
    }
    assert not (cancelled and requester.offered)
