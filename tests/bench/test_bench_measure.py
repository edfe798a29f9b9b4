"""Pure measurement helpers of the benchmarks: wrk output parsing, dispatch gaps."""

from __future__ import annotations

import pytest

from bench.lib.wrk import parse
from bench.scenarios.dispatch import gaps_of, split_gaps

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8080/v1/completions
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.47ms   30.12ms 400.00ms   91.00%
    Req/Sec     1.22k   200.00     1.60k    70.00%
  Latency Distribution
     50%   21.47ms
     75%   30.00ms
     90%   50.00ms
     99%  1.18s
  12090 requests in 5.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   2418.00
Transfer/sec:    634.00KB
"""


def test_wrk_output_is_parsed() -> None:
    r = parse(WRK_OUTPUT, "wrk ...")
    assert (r.requests, r.seconds, r.non_2xx, r.socket_errors) == (12090, 5.0, 7, 3)
    assert r.p50_ms == pytest.approx(21.47)
    assert r.p99_ms == pytest.approx(1180.0)
    assert r.rate == pytest.approx(2418.0)
    assert r.ok_rate == pytest.approx((12090 - 7) / 5.0)


def test_wrk_output_without_errors_and_in_microseconds() -> None:
    text = WRK_OUTPUT.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 7\n", "").replace("21.47ms", "950.5us")
    r = parse(text, "wrk")
    assert (r.non_2xx, r.socket_errors) == (0, 0)
    assert r.p50_ms == pytest.approx(0.9505)


def test_unexpected_wrk_output_raises() -> None:
    with pytest.raises(ValueError):
        parse("unable to connect to 127.0.0.1:1 Connection refused", "wrk")


def test_dispatch_gaps_skip_the_warm_up_and_ignore_order() -> None:
    # (arrived, slot released) at the replica, given out of order.
    timings = [(0.030, 0.050), (0.0, 0.020), (0.022, 0.028), (0.053, 0.070)]
    gaps, span = gaps_of(timings, skip=1)
    assert gaps == pytest.approx([0.002, 0.003])
    assert span == pytest.approx(0.070 - 0.022)


def test_dispatch_gap_is_cut_at_release_and_route() -> None:
    timings = [(0.0, 0.020), (0.025, 0.045), (0.050, 0.070)]
    released = [0.021, 0.046]
    routed = [0.0215, 0.0465, 0.5]  # a stray stamp after the run does not match anything
    stages = split_gaps(timings, 0, released, routed)
    assert stages[0] == pytest.approx([0.001, 0.001])
    assert stages[1] == pytest.approx([0.0005, 0.0005])
    assert stages[2] == pytest.approx([0.0035, 0.0035])


def test_dispatch_gap_without_stamps_inside_it_is_left_out() -> None:
    timings = [(0.0, 0.020), (0.025, 0.045)]
    assert split_gaps(timings, 0, released=[0.030], routed=[0.031]) == [[], [], []]
