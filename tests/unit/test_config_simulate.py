"""``simulate:``: per-replica slot counts and generation timing, and how errors name them."""

from __future__ import annotations

import pytest

from warmroute import config
from warmroute.errors import ConfigError
from warmroute.sim.process import sim_args


def pool(simulate: str, extra: str = "") -> config.PoolConfig:
    head = "pools:\n  - name: a\n    models: [m, m2]\n    slots: 2\n"
    text = f"{head}{extra}    simulate: {simulate}\n"
    return config.parse(text, "pools.yaml").pools[0]


def error(simulate: str, extra: str = "") -> str:
    with pytest.raises(ConfigError) as caught:
        pool(simulate, extra)
    return str(caught.value)


def slots_of(p: config.PoolConfig) -> list[tuple[str, int]]:
    return [(r.address, p.replica_slots(r)) for r in p.all_replicas()]


def test_default_is_the_pools_slots() -> None:
    p = pool("{replicas: 2, base_port: 9001}")
    assert slots_of(p) == [("127.0.0.1:9001", 2), ("127.0.0.1:9002", 2)]


def test_one_number_for_every_replica() -> None:
    assert [s for _, s in slots_of(pool("{replicas: 3, slots: 4}"))] == [4, 4, 4]
    assert [s for _, s in slots_of(pool("{replicas: 2, slots: [5]}"))] == [5, 5]


def test_a_list_gives_each_replica_its_own_and_sets_the_count() -> None:
    p = pool("{slots: [1, 2, 4], base_port: 9100}")
    assert p.simulate is not None and p.simulate.replicas == 3
    assert slots_of(p) == [("127.0.0.1:9100", 1), ("127.0.0.1:9101", 2), ("127.0.0.1:9102", 4)]
    assert pool("{replicas: 2, slots: [3, 1]}").simulated_slots(1) == 1


def test_replicas_are_spawned_with_their_own_slots_and_timing() -> None:
    p = pool("{slots: [1, 3], base_port: 9100, ttft_ms: 7, per_token_ms: 0.5, seed: 4}")
    args = sim_args(p, 1)
    assert args[args.index("--port") + 1] == "9101"
    assert args[args.index("--slots") + 1] == "3"
    assert args[args.index("--ttft-ms") + 1] == "7.0"
    assert args[args.index("--per-token-ms") + 1] == "0.5"
    assert args[args.index("--seed") + 1] == "5"
    models = args.index("--model")
    assert args[models + 1 : models + 3] == ["m", "m2"]
    assert sim_args(p, 0, slots=9)[args.index("--slots") + 1] == "9"


def test_autoscaled_pool_uses_per_replica_slots() -> None:
    autoscale = "    autoscale: {max_replicas: 3}\n"
    p = pool("{slots: [1, 2, 8]}", autoscale)
    assert p.simulated_replicas() == []  # the scaler starts them
    assert [p.simulated_slots(i) for i in range(3)] == [1, 2, 8]


@pytest.mark.parametrize(
    ("simulate", "expected"),
    [
        ("{slots: 0}", "pools[0].simulate.slots (line 5): Input should be greater than or equal"),
        ("{slots: [1, 0]}", "pools[0].simulate.slots[1] (line 5): Input should be greater than or"),
        ("{slots: [1, x]}", "pools[0].simulate.slots[1] (line 5): Input should be a valid integer"),
        ("{slots: []}", "pools[0].simulate.slots (line 5): List should have at least 1 item"),
        ("{slots: many}", "pools[0].simulate.slots (line 5): Input should be a valid integer"),
        ("{replicas: 2, slots: [1, 2, 3]}",
         "pools[0].simulate.slots (line 5): lists 3 slot counts for 2 replicas"),
        ("{ttft_ms: -1}", "pools[0].simulate.ttft_ms (line 5): Input should be greater than or"),
        ("{per_token_ms: .inf}", "pools[0].simulate.per_token_ms (line 5): Input should be"),
        ("{slotz: 1}", "pools[0].simulate.slotz (line 5): unknown key"),
    ],
)  # fmt: skip
def test_errors_name_the_key_path(simulate: str, expected: str) -> None:
    message = error(simulate)
    assert expected in message, message
    assert "list[" not in message and ".int" not in message  # no union member in the path


def test_autoscale_needs_a_slot_count_for_every_replica_it_may_start() -> None:
    message = error("{slots: [1, 2]}", "    autoscale: {max_replicas: 3}\n")
    assert "pools[0]" in message and "simulate.slots lists 2 slot counts" in message, message
    assert "autoscale.max_replicas is 3" in message
