"""The simulated replica's prefix cache: what is a hit, how it shortens service, its bound."""

from __future__ import annotations

import json

import aiohttp
import pytest

from warmroute.sim.prefix_cache import PrefixCache, PrefixHit
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import ServiceTime


def _chat(system: str, question: str) -> bytes:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return json.dumps({"model": "m", "messages": messages}).encode()


def test_leading_blocks_hit_after_the_first_request() -> None:
    cache = PrefixCache(speedup=4.0, block_chars=10, capacity_blocks=100)
    first = cache.serve(_chat("s" * 50, "q1" * 20))
    assert first.hit == 0 and first.blocks > 5
    again = cache.serve(_chat("s" * 50, "q2" * 20))
    # "system\n" + 50 characters + "\n" + "user\n": 6 full blocks before the questions differ.
    assert again.hit == 6
    other = cache.serve(_chat("t" * 50, "q1" * 20))
    assert other.hit == 0  # chained: same later text after a different prefix is no hit


def test_factor_scales_with_the_cached_share() -> None:
    assert PrefixHit(10, 0).factor(4.0) == 1.0
    assert PrefixHit(10, 10).factor(4.0) == pytest.approx(0.25)
    assert PrefixHit(10, 5).factor(4.0) == pytest.approx(0.625)
    assert PrefixHit(0, 0).factor(4.0) == 1.0
    assert PrefixHit(10, 10).factor(1.0) == 1.0


def test_capacity_bounds_the_cache_and_evicts_the_least_recent() -> None:
    cache = PrefixCache(speedup=2.0, block_chars=4, capacity_blocks=8)
    cache.serve(json.dumps({"prompt": "a" * 32}).encode())  # 8 blocks: full
    cache.serve(json.dumps({"prompt": "b" * 16}).encode())  # 4 more: the first 4 "a" go
    assert cache.serve(json.dumps({"prompt": "a" * 32}).encode()).hit == 0
    with pytest.raises(ValueError):
        PrefixCache(speedup=0.5)


def test_not_json_has_no_blocks() -> None:
    assert PrefixCache(2.0, 4).serve(b"\xffnot json") == PrefixHit(0, 0)


async def test_replica_counts_hits_and_answers_faster() -> None:
    sim = SimReplica(
        2, 0.0, ServiceTime("fixed", 1.0), seed=1, model="m",
        prefix_cache=PrefixCache(speedup=4.0, block_chars=16),
    )  # fmt: skip
    port = await sim.start()
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        served = []
        async with aiohttp.ClientSession() as http:
            for q in ("one", "two"):
                body = _chat("shared system prompt " * 10, q)
                async with http.post(url, data=body, headers={"x-sim-service-ms": "8"}) as r:
                    assert r.status == 200
                    served.append((await r.json())["service_ms"])
        stats = sim.stats()
        assert stats.prefix_hits == 1
        assert 0 < stats.prefix_blocks_hit < stats.prefix_blocks
        assert served[0] == pytest.approx(8.0)
        assert served[1] < 8.0 * 0.5  # most of the prompt was cached
        sim.reset()
        assert sim.stats().prefix_hits == 0
    finally:
        await sim.stop()
