"""Scorers and the picker (``warmroute.state.scorers``, ``warmroute.state.picker``): each
scorer's rating, the fused one-pass picks equal to filter-then-pick, and the weighted
combination of the ``prefix_affinity`` profile (a session over any prefix, a longer
prefix over any load difference, load between equals, then least recently used). Pure,
no clock. The prefix policy's own properties are in test_state_affinity.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from warmroute.state import Ask, Phase
from warmroute.state.affinity import Affinity, AffinityMemory, AffinitySpec
from warmroute.state.candidates import free
from warmroute.state.picker import PROFILES, Picker
from warmroute.state.replica import Capacity, Replica
from warmroute.state.scorers import SCORERS, FirstFree, LeastLoaded, Prefix, Session


class Context:
    """What the scorers read of a pool: its affinity memory and spec."""

    def __init__(self, spec: AffinitySpec | None = None) -> None:
        self.affinity_spec = spec
        self.affinity: AffinityMemory | None = AffinityMemory(100) if spec else None


def _replica(
    i: int, slots: int = 4, busy: int = 0, used: float = 0.0, phase: Phase = Phase.WARM
) -> Replica:
    address = f"10.0.0.{i}:80"
    r = Replica(address, slots, phase, Capacity(address, slots))
    r.capacity.leased = busy
    r.last_used = used
    return r


def test_least_loaded_rates_free_share_and_picks_the_least_recently_used_of_equals() -> None:
    rs = [_replica(1, busy=2), _replica(2, busy=1, used=5.0), _replica(3, busy=1, used=1.0)]
    assert LeastLoaded().score(None, rs, Context()) == [0.5, 0.75, 0.75]
    assert LeastLoaded().pick(rs) is rs[2]


def test_first_free_rates_by_position() -> None:
    rs = [_replica(1, busy=3), _replica(2), _replica(3)]
    assert FirstFree().score(None, rs, Context()) == [1.0, 1 - 1 / 3, 1 - 2 / 3]
    assert FirstFree().pick(rs) is rs[0]


replica_shapes = st.lists(
    st.tuples(
        st.integers(1, 4),  # slots
        st.integers(0, 5),  # leased
        st.integers(0, 2),  # external
        st.sampled_from([Phase.WARM, Phase.WARM, Phase.LOADING, Phase.DRAINING]),
        st.integers(0, 3),  # last used
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(replica_shapes)
def test_the_one_pass_picks_equal_filter_then_pick(
    shapes: list[tuple[int, int, int, Phase, int]],
) -> None:
    rs = []
    for i, (slots, leased, external, phase, used) in enumerate(shapes):
        r = _replica(i, slots, leased, float(used), phase)
        r.external = external
        rs.append(r)
    for scorer in (LeastLoaded(), FirstFree()):
        assert scorer.pick_any(rs) is scorer.pick(free(rs))


def test_prefix_and_session_have_an_opinion_only_on_hinted_requests() -> None:
    plain, hinted = Ask("r"), Ask("r", affinity=Affinity("s", (1, 2)))
    assert not Prefix().applies(plain) and Prefix().applies(hinted)
    assert not Session().applies(plain) and Session().applies(hinted)
    assert not Prefix().applies(Ask("r", affinity=Affinity("s")))
    context = Context(AffinitySpec())
    rs = [_replica(1), _replica(2)]
    assert Prefix().score(hinted, rs, context) is None  # nothing remembered yet
    assert Session().score(hinted, rs, context) is None


def test_the_prefix_profile_orders_session_then_prefix_then_load() -> None:
    spec = AffinitySpec(max_imbalance=2)
    context = Context(spec)
    memory = context.affinity
    assert memory is not None
    rs = [_replica(1, busy=0), _replica(2, busy=1), _replica(3, busy=2)]
    blocks = (11, 12, 13, 14)
    memory.remember(Affinity(blocks=blocks[:2]), rs[1].address)  # two blocks
    memory.remember(Affinity(blocks=blocks), rs[2].address)  # all four, but busier
    picker = Picker(PROFILES["prefix_affinity"], context)
    prompt = Ask("r", affinity=Affinity(blocks=blocks))
    assert picker.pick(rs, prompt) is rs[2]  # the longest prefix, within the bound
    memory.remember(Affinity(session="s"), rs[0].address)
    assert picker.pick(rs, Ask("r", affinity=Affinity("s", blocks))) is rs[0]  # the session
    assert picker.pick(rs, Ask("r")) is rs[0]  # no hint: least loaded
    rs[2].capacity.leased = 3  # now 3 above the least busy: beyond the bound
    assert picker.pick(rs, prompt) is rs[1]


def test_picks_are_only_among_the_free_and_ties_go_to_the_least_recently_used() -> None:
    rs = [_replica(1, busy=4), _replica(2, used=2.0), _replica(3, used=1.0)]
    for policy in PROFILES:
        picker = Picker(PROFILES[policy], Context(AffinitySpec()))
        choice = picker.choose(rs, Ask("r"), held=set())
        assert choice is (rs[1] if policy == "first_free" else rs[2])
        assert picker.choose(rs, Ask("r", eligible=frozenset({rs[0].address}))) is None
    rs[2].held = True  # outlier detection holds it
    assert Picker(PROFILES["least_loaded"], Context()).choose(rs, Ask("r")) is rs[1]


def test_every_profile_names_known_scorers() -> None:
    for profile in PROFILES.values():
        assert {name for name, _ in profile} <= SCORERS.keys()
        assert all(weight > 0 for _, weight in profile)
