"""What the adapters show from the registry's view when two pools share a server.

A slot another pool holds is busy here too: the ``warmroute_slots_busy`` gauge and the
status table count it, while ``warmroute_leases_in_flight`` stays this pool's own leases.
"""

from __future__ import annotations

from warmroute.metrics import Metrics
from warmroute.state import Phase, PoolSpec, Registry, ReplicaExternalLoad, ReplicaUpsert
from warmroute.state.ask import Ask
from warmroute.view import render

R = "10.0.0.1:8000"


def shared() -> Registry:
    """Pools a and b list server R (4 slots); a holds 1 lease on it, b holds 2."""
    registry = Registry(clock=lambda: 0.0)
    registry.configure([PoolSpec("a", ("ma",)), PoolSpec("b", ("mb",))])
    for pool in ("a", "b"):
        registry.apply(ReplicaUpsert(pool, R, 4, Phase.WARM))
    for pool, n in (("a", 1), ("b", 2)):
        for i in range(n):
            assert registry.pools[pool].try_acquire(Ask(f"{pool}{i}")) is not None
    return registry


def test_the_busy_gauge_counts_every_pools_leases_on_a_server() -> None:
    registry = shared()
    text = Metrics(registry.view).exposition().decode()
    assert 'warmroute_leases_in_flight{pool="a"} 1.0' in text
    assert 'warmroute_slots_busy{pool="a"} 3.0' in text
    assert 'warmroute_slots_busy{pool="b"} 3.0' in text
    registry.apply(ReplicaExternalLoad("a", R, 4))  # one request we did not lease
    text = Metrics(registry.view).exposition().decode()
    assert 'warmroute_slots_busy{pool="a"} 4.0' in text
    assert 'warmroute_leases_in_flight{pool="a"} 1.0' in text


def test_the_status_table_marks_another_pools_leases() -> None:
    lines = render(shared().view().to_json()).splitlines()
    assert "busy 3/4 warm slots" in lines[0]  # pool a: 1 of its own, 2 of b's
    assert lines[2].split()[:3] == [R, "warm", "#++."]
    assert lines[5].split()[:3] == [R, "warm", "##+."]


def test_the_status_table_reads_documents_without_busy() -> None:
    """``warmroute status`` may ask a server from before ``busy`` existed."""
    state = shared().view().to_json()
    for pool in state["pools"]:
        for replica in pool["replicas"]:
            del replica["busy"]
    lines = render(state).splitlines()
    assert "busy 1/4 warm slots" in lines[0]
    assert lines[2].split()[:3] == [R, "warm", "#..."]


def test_the_status_table_shows_the_start_fence_and_what_it_holds() -> None:
    registry = Registry(clock=lambda: 0.0)
    registry.configure([PoolSpec("a", ("ma",))])
    registry.apply(ReplicaUpsert("a", R, 2, Phase.WARM))
    registry.inflight.begin("start")
    lines = render(registry.view().to_json()).splitlines()
    assert any(R in line and "fenced 2" in line for line in lines), lines
    assert (
        lines[-1]
        == "fence (start): 1 replica(s) held until their load is known (Envoys reporting: 0)"
    )
    text = Metrics(registry.view).exposition().decode()
    assert 'warmroute_replicas_fenced{pool="a"} 1.0' in text
    assert 'warmroute_slots_unleased{pool="a"} 2.0' in text
    registry.inflight.lift_all()
    assert "fence" not in render(registry.view().to_json())
