"""The ideal router (bench/lib/ideal.py): FCFS M/G/c on a given trace, checked against cases
worked by hand and against queueing theory (Pollaczek-Khinchine, Erlang C)."""

from __future__ import annotations

import math
import random

import pytest

from bench.lib.ideal import fifo_latencies, fifo_waits


def test_one_server_deterministic_service_at_its_pace_never_waits() -> None:
    assert fifo_waits([0.0, 1.0, 2.0, 3.0], [1.0] * 4, servers=1) == [0.0] * 4


def test_one_server_all_at_once_waits_in_arrival_order() -> None:
    assert fifo_waits([0.0] * 4, [1.0] * 4, servers=1) == [0.0, 1.0, 2.0, 3.0]


def test_two_servers_all_at_once() -> None:
    assert fifo_waits([0.0] * 6, [1.0] * 6, servers=2) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_overloaded_deterministic_queue_grows_linearly() -> None:
    # D/D/1 with service 2 and arrivals every 1: each request waits 1 more than the last.
    assert fifo_waits([0.0, 1.0, 2.0, 3.0], [2.0] * 4, servers=1) == [0.0, 1.0, 2.0, 3.0]


def test_zero_load_means_zero_wait() -> None:
    arrivals = [10.0 * i for i in range(100)]
    services = [random.Random(i).uniform(0.1, 9.9) for i in range(100)]
    assert fifo_waits(arrivals, services, servers=3) == [0.0] * 100


def test_next_free_server_is_taken_not_the_next_in_turn() -> None:
    # Server A busy until 10, server B until 1: the third request starts at 1 on B.
    assert fifo_waits([0.0, 0.0, 0.5], [10.0, 1.0, 1.0], servers=2) == [0.0, 0.0, 0.5]


def test_a_short_request_never_overtakes_in_the_queue() -> None:
    # FIFO: the 1 s request queued behind a 5 s one waits for the first free server.
    waits = fifo_waits([0.0, 0.1, 0.2], [3.0, 5.0, 1.0], servers=1)
    assert waits == pytest.approx([0.0, 2.9, 7.8])


def test_latency_is_wait_plus_service() -> None:
    lat = fifo_latencies([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], servers=1)
    assert lat == [1.0, 3.0, 6.0]


def test_empty_trace() -> None:
    assert fifo_waits([], [], servers=4) == []


@pytest.mark.parametrize(
    ("arrivals", "services", "servers"),
    [
        ([0.0, 1.0], [1.0], 1),  # lengths differ
        ([1.0, 0.0], [1.0, 1.0], 1),  # unsorted
        ([0.0], [-1.0], 1),  # negative service
        ([0.0], [1.0], 0),  # no server
    ],
)
def test_bad_input_is_rejected(arrivals: list[float], services: list[float], servers: int) -> None:
    with pytest.raises(ValueError):
        fifo_waits(arrivals, services, servers)


def _poisson(rate: float, n: int, rng: random.Random) -> list[float]:
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    # M/D/1, rho = 0.5: Wq = rho / (2 mu (1 - rho)) = 0.5.
    rng = random.Random(7)
    n = 200_000
    waits = fifo_waits(_poisson(0.5, n, rng), [1.0] * n, servers=1)
    assert sum(waits) / n == pytest.approx(0.5, rel=0.05)


def test_mmc_mean_wait_matches_erlang_c() -> None:
    c, lam, mu = 3, 2.4, 1.0
    a = lam / mu
    rho = a / c
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) / (1 - rho)
    erlang_c = tail / (head + tail)
    expected = erlang_c / (c * mu - lam)
    rng = random.Random(11)
    n = 200_000
    services = [rng.expovariate(mu) for _ in range(n)]
    waits = fifo_waits(_poisson(lam, n, rng), services, servers=c)
    assert sum(waits) / n == pytest.approx(expected, rel=0.06)
