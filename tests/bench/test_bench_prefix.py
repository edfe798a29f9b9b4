"""The prefix benchmark's pure parts: its trace, request bytes and ideal."""

from __future__ import annotations

import json
import math

from bench.scenarios.prefix_plan import (
    Plan,
    chat_body,
    http_payload,
    ideal_services,
    prefix_trace,
    summarize,
    system_prompt,
)

P = Plan(duration=10.0)


def test_trace_is_seeded_sorted_and_at_the_planned_rate() -> None:
    a, b = prefix_trace(P, 1), prefix_trace(P, 1)
    assert a == b
    assert a != prefix_trace(P, 2)
    assert [r.at for r in a] == sorted(r.at for r in a)
    assert all(0 <= r.at < P.duration for r in a)
    # Poisson: within 5 standard deviations of rate * duration.
    mean = P.rate * P.duration
    assert abs(len(a) - mean) < 5 * math.sqrt(mean)
    assert {r.tenant for r in a} <= set(range(P.tenants))
    assert len({r.question for r in a}) == len(a)  # every question is unique


def test_zipf_makes_the_first_tenant_the_most_popular() -> None:
    trace = prefix_trace(Plan(duration=60.0), 3)
    counts = [sum(r.tenant == k for r in trace) for k in range(P.tenants)]
    assert counts[0] == max(counts)
    assert counts[0] > 3 * counts[-1]


def test_system_prompts_have_their_size_and_differ() -> None:
    prompts = {system_prompt(k, 2048) for k in range(24)}
    assert len(prompts) == 24
    assert all(len(s) == 2048 for s in prompts)


def test_payload_is_a_whole_http_request_with_the_chat_body() -> None:
    r = prefix_trace(P, 1)[0]
    raw = http_payload(P, r, session=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == chat_body(P, r)
    assert f"content-length: {len(body)}".encode() in head
    assert f"x-session-id: tenant-{r.tenant}".encode() in head
    assert b"x-session-id" not in http_payload(P, r, session=False)
    doc = json.loads(body)
    assert doc["messages"][0]["content"] == system_prompt(r.tenant, P.system_chars)
    assert doc["messages"][1]["content"] == r.question


def test_ideal_misses_each_tenants_first_request_only() -> None:
    trace = prefix_trace(P, 1)
    services = ideal_services(P, trace)
    seen: set[int] = set()
    for r, s in zip(trace, services, strict=True):
        if r.tenant in seen:
            # Most of the prompt is the cached system prompt: well under the full time.
            assert s < r.service_s * 0.6
        else:
            assert s == r.service_s
            seen.add(r.tenant)


def test_summarize() -> None:
    assert all(math.isnan(v) for v in summarize([]))
    p50, p99, mean = summarize([1.0, 2.0, 3.0])
    assert p50 == 2.0 and mean == 2.0 and 2.9 <= p99 <= 3.0
