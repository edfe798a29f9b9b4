"""Affinity in the state core: prompt block hashes, the bounded memory, the
``prefix_affinity`` policy and ``Pool.try_acquire`` with a hint. Pure, clocked, no sleeps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from warmroute.state import Lease, Phase, PoolSpec, Registry, ReplicaExternalLoad, ReplicaUpsert
from warmroute.state.affinity import Affinity, AffinityMemory, AffinitySpec, prompt_blocks
from warmroute.state.ask import Ask
from warmroute.state.candidates import free
from warmroute.state.picker import PROFILES, Picker
from warmroute.state.replica import Capacity, Replica
from warmroute.state.scorers import LeastLoaded

ADDRS = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


DEFAULT = AffinitySpec()


def _registry(spec: AffinitySpec | None = DEFAULT, slots: int = 4) -> Registry:
    clock = Clock()
    n = iter(range(1_000_000))
    reg = Registry(clock=clock, new_id=lambda: f"lease-{next(n)}")
    policy = "prefix_affinity" if spec is not None else "least_loaded"
    reg.configure([PoolSpec("p", ("m",), policy=policy, affinity=spec)])
    for a in ADDRS[:3]:
        reg.apply(ReplicaUpsert("p", a, slots, Phase.WARM))
    return reg


def _replica(address: str, slots: int, busy: int, last_used: float = 0.0) -> Replica:
    r = Replica(address, slots, Phase.WARM, Capacity(address, slots))
    r.capacity.leased = busy
    r.last_used = last_used
    return r


# -- prompt blocks ---------------------------------------------------------------------------


def test_blocks_are_chained_prefix_hashes() -> None:
    a = prompt_blocks("x" * 10 + "y" * 10, 5, 100)
    b = prompt_blocks("x" * 10 + "z" * 10, 5, 100)
    assert len(a) == 4
    assert a[:2] == b[:2]  # same leading 10 characters
    assert a[2] != b[2] and a[3] != b[3]
    # The same block content after a different prefix hashes differently (chained).
    assert prompt_blocks("ab" + "cc", 2, 10)[1] != prompt_blocks("xx" + "cc", 2, 10)[1]


def test_only_full_blocks_and_at_most_max_blocks() -> None:
    assert prompt_blocks("abc", 4, 10) == ()
    assert len(prompt_blocks("abcdefghi", 4, 10)) == 2
    assert len(prompt_blocks("a" * 100, 4, 3)) == 3
    assert prompt_blocks("a" * 100, 0, 10) == ()


@given(st.text(max_size=200), st.text(max_size=50), st.integers(1, 16))
def test_a_shared_prefix_shares_its_full_blocks(prefix: str, rest: str, size: int) -> None:
    whole = prompt_blocks(prefix + rest, size, 1000)
    assert whole[: len(prefix) // size] == prompt_blocks(prefix, size, 1000)


# -- the memory ------------------------------------------------------------------------------


def test_scores_count_leading_blocks_served() -> None:
    memory = AffinityMemory(100)
    long = prompt_blocks("s" * 40 + "u1", 10, 100)
    memory.remember(Affinity(blocks=long), ADDRS[0])
    memory.remember(Affinity(blocks=long[:2]), ADDRS[1])
    # (leading blocks, recency): ADDRS[1] is the latest granted block 2, ADDRS[0] the only
    # one granted block 4.
    assert memory.scores(Affinity(blocks=long)) == {ADDRS[0]: (4, 4), ADDRS[1]: (2, 4)}
    other = prompt_blocks("t" * 40, 10, 100)
    assert memory.scores(Affinity(blocks=other)) == {}


def test_session_outranks_any_prefix_and_follows_the_last_grant() -> None:
    memory = AffinityMemory(100)
    blocks = prompt_blocks("s" * 30, 10, 100)
    memory.remember(Affinity(blocks=blocks), ADDRS[0])
    memory.remember(Affinity(session="alice"), ADDRS[1])
    memory.remember(Affinity(session="alice"), ADDRS[2])
    scores = memory.scores(Affinity("alice", blocks))
    assert scores == {ADDRS[0]: (3, 4), ADDRS[2]: (4, 4)}


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 20),
    st.lists(
        st.tuples(st.lists(st.integers(0, 50), max_size=6), st.sampled_from(ADDRS)), max_size=40
    ),
)
def test_memory_is_bounded_and_keeps_the_latest(
    capacity: int, grants: list[tuple[list[int], str]]
) -> None:
    memory = AffinityMemory(capacity)
    for blocks, address in grants:
        memory.remember(Affinity(blocks=tuple(blocks)), address)
        assert len(memory) <= capacity
    if grants and grants[-1][0]:
        blocks, address = grants[-1]
        last = blocks[-1]
        if len(set(blocks)) <= capacity:
            assert last in memory.ordered()
            # The newest grant of a key is its first replica.
            assert memory.scores(Affinity(blocks=(last,))).get(address) == (1, 4)


# -- the policy ------------------------------------------------------------------------------


class _Served:
    """A pool's view for the scorers whose memory says the prefix scores are ``scores``."""

    def __init__(self, scores: dict[str, tuple[int, int]], bound: int) -> None:
        self.scores = scores
        self.affinity_spec = AffinitySpec(max_imbalance=bound)

    @property
    def affinity(self) -> _Served:
        return self

    def prefix_scores(self, blocks: tuple[int, ...]) -> dict[str, tuple[int, int]]:
        return dict(self.scores)

    def session_of(self, session: str) -> str | None:
        return None


def prefix_affinity(
    rs: list[Replica], scores: dict[str, tuple[int, int]], bound: int
) -> Replica | None:
    """The ``prefix_affinity`` profile's pick among the free of ``rs`` for a prompt whose
    prefix each address served as ``scores`` says (depth, recency)."""
    depth = max((d for d, _ in scores.values()), default=1)
    ask = Ask("r", affinity=Affinity(blocks=tuple(range(depth))))
    picker = Picker(PROFILES["prefix_affinity"], _Served(scores, bound))  # type: ignore[arg-type]
    return picker.pick(free(rs), ask)


def least_loaded(rs: list[Replica]) -> Replica | None:
    return LeastLoaded().pick(free(rs))


def test_longest_prefix_wins_within_the_bound() -> None:
    rs = [_replica(ADDRS[0], 4, 0), _replica(ADDRS[1], 4, 2), _replica(ADDRS[2], 4, 1)]
    scores = {ADDRS[1]: (5, 1), ADDRS[2]: (3, 4)}
    assert prefix_affinity(rs, scores, 2) is rs[1]
    # One more in flight on the best match: over the bound; the next best is within it.
    rs[1].capacity.leased = 3
    assert prefix_affinity(rs, scores, 2) is rs[2]
    # No match within the bound: least_loaded's pick.
    assert prefix_affinity(rs, scores, 0) is rs[0]
    assert prefix_affinity(rs, {}, 2) is least_loaded(rs)


def test_equal_prefixes_go_back_to_the_most_recent_replica() -> None:
    memory = AffinityMemory(100)
    blocks = prompt_blocks("p" * 40, 10, 100)
    memory.remember(Affinity(blocks=blocks), ADDRS[0])
    memory.remember(Affinity(blocks=blocks), ADDRS[1])  # it overflowed there last
    rs = [_replica(ADDRS[0], 4, 0), _replica(ADDRS[1], 4, 1), _replica(ADDRS[2], 4, 0)]
    # Both served the whole prompt; the most recent wins though it is busier (within 2).
    assert prefix_affinity(rs, memory.scores(Affinity(blocks=blocks)), 2) is rs[1]


def test_a_full_preferred_replica_is_never_chosen() -> None:
    rs = [_replica(ADDRS[0], 1, 1), _replica(ADDRS[1], 4, 3)]
    assert prefix_affinity(rs, {ADDRS[0]: (9, 4)}, 100) is rs[1]
    rs[1].capacity.leased = 4
    assert prefix_affinity(rs, {ADDRS[0]: (9, 4), ADDRS[1]: (1, 1)}, 100) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 3)), min_size=1),
    st.integers(0, 3),
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 4)), min_size=8, max_size=8),
)
def test_policy_properties(
    shapes: list[tuple[int, int, int]], bound: int, raw_scores: list[tuple[int, int]]
) -> None:
    rs = []
    for i, (slots, busy, ext) in enumerate(shapes):
        r = _replica(f"10.1.0.{i}:80", slots, min(busy, slots), last_used=float(i % 3))
        r.external = ext
        rs.append(r)
    # Every third replica served nothing (no score).
    scores = {r.address: raw_scores[i % 8] for i, r in enumerate(rs) if i % 3 != 2}
    pick = prefix_affinity(rs, scores, bound)
    free = [r for r in rs if r.capacity.leased + r.external < r.capacity.slots]
    if not free:
        assert pick is None
        return
    assert pick in free  # never a full replica
    least = min(r.capacity.leased + r.external for r in free)
    within = [
        r for r in free if r.capacity.leased + r.external - least <= bound and r.address in scores
    ]
    if within:
        # Never beyond the bound, and the longest prefix within it wins.
        assert pick.capacity.leased + pick.external - least <= bound
        assert scores[pick.address] == max(scores[r.address] for r in within)
    else:
        assert pick is least_loaded(rs)


# -- the pool --------------------------------------------------------------------------------


def test_try_acquire_follows_the_prefix_and_remembers_grants() -> None:
    reg = _registry()
    pool = reg.pools["p"]
    system = prompt_blocks("system prompt " * 40, 64, 128)
    first = pool.try_acquire(Ask("r1", affinity=Affinity(blocks=system)))
    assert first is not None
    # Three more with the same prefix land on the same replica (within the bound of 2).
    same = [pool.try_acquire(Ask(f"s{i}", affinity=Affinity(blocks=system))) for i in range(2)]
    assert {lease.address for lease in same if lease} == {first.address}
    # The next would be 3 above the idle replicas: over the bound, it spreads.
    spread = pool.try_acquire(Ask("s3", affinity=Affinity(blocks=system)))
    assert spread is not None and spread.address != first.address
    # A request without a hint is a least_loaded pick, untouched by the memory.
    plain = pool.try_acquire(Ask("plain"))
    assert plain is not None and plain.address not in (first.address, spread.address)


def test_a_waiter_keeps_fifo_and_its_grant_is_remembered() -> None:
    reg = _registry(slots=1)
    pool = reg.pools["p"]
    held = [pool.try_acquire(Ask(f"h{i}")) for i in range(3)]
    assert all(held)
    blocks = prompt_blocks("q" * 100, 10, 100)
    assert pool.try_acquire(Ask("w", affinity=Affinity(blocks=blocks))) is None  # all full
    got: list[Lease] = []

    def grant(lease: Lease) -> bool:
        got.append(lease)
        return True

    pool.enqueue(Ask("w", affinity=Affinity(blocks=blocks)), grant)
    assert held[1] is not None
    held[1].release()
    assert [lease.address for lease in got] == [held[1].address]  # the freed slot, FIFO
    assert pool.affinity is not None
    assert pool.affinity.scores(Affinity(blocks=blocks)) == {held[1].address: (len(blocks), 4)}


def test_hints_are_ignored_without_an_affinity_spec() -> None:
    reg = _registry(spec=None)
    pool = reg.pools["p"]
    lease = pool.try_acquire(Ask("r", affinity=Affinity(session="s")))
    assert lease is not None
    assert pool.affinity is None


def test_eligible_set_bounds_the_affinity_pick() -> None:
    reg = _registry()
    pool = reg.pools["p"]
    hint = Affinity(session="bob")
    first = pool.try_acquire(Ask("a", eligible=frozenset({ADDRS[0]}), affinity=hint))
    assert first is not None and first.address == ADDRS[0]
    other = pool.try_acquire(Ask("b", eligible=frozenset({ADDRS[1], ADDRS[2]}), affinity=hint))
    assert other is not None and other.address in (ADDRS[1], ADDRS[2])


PROMPTS = [prompt_blocks(f"prompt {k} " * 30, 32, 16) for k in range(4)]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 3),
    st.lists(
        st.one_of(
            st.tuples(st.just("acquire"), st.integers(0, 3), st.sampled_from(["", "s1", "s2"])),
            st.tuples(st.just("release"), st.integers(0, 1000), st.just("")),
            st.tuples(st.just("external"), st.integers(0, 2), st.sampled_from(["0", "1", "3"])),
        ),
        max_size=60,
    ),
)
def test_pool_with_hints_never_overbooks_nor_exceeds_the_bound(
    bound: int, ops: list[tuple[str, int, str]]
) -> None:
    reg = _registry(AffinitySpec(max_imbalance=bound, memory=20), slots=2)
    pool = reg.pools["p"]
    held: list[Lease] = []
    for op, n, arg in ops:
        if op == "acquire":
            hint = Affinity(arg, PROMPTS[n])
            free = [r for r in pool.replicas.values() if r.free > 0]
            busy = {r.address: r.busy for r in free}
            fallback = least_loaded(list(pool.replicas.values()))
            scores = pool.affinity.scores(hint) if pool.affinity else {}
            lease = pool.try_acquire(Ask(f"r{len(held)}", eligible=None, affinity=hint))
            if lease is None:
                assert not free
                continue
            held.append(lease)
            address = lease.address
            assert address in busy  # a free replica, never a full one
            assert lease.replica.capacity.leased + lease.replica.external <= 2
            least = min(busy.values())
            if address in scores and busy[address] - least <= bound:
                # The best-scoring replica within the bound.
                within = [a for a in busy if a in scores and busy[a] - least <= bound]
                assert scores[address] == max(scores[a] for a in within)
            else:
                assert not [a for a in busy if a in scores and busy[a] - least <= bound]
                assert fallback is not None and address == fallback.address
        elif op == "release" and held:
            held.pop(n % len(held)).release()
        elif op == "external":
            running = len(pool.replicas[ADDRS[n]].leases) + int(arg)  # external: arg
            reg.apply(ReplicaExternalLoad("p", ADDRS[n], running))
        assert pool.affinity is None or len(pool.affinity) <= 20
