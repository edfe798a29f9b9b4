"""Pure parts of the body-routing benchmark: request bodies, Envoy stats, CPU accounting,
and mechanism A's listener rewrite and ext_proc message shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from bench.lib.chat_body import chat_body, post_request, size_label
from bench.lib.contenders.buffered_body import (
    as_body_response,
    buffered_listener,
    buffered_snapshot,
    has_header,
    note_body_model,
)
from bench.lib.loadgen import Outcome
from bench.lib.measure import RateRun
from bench.scenarios.body import parse_tx_bytes, split_tx
from bench.scenarios.body_plan import (
    LOADS,
    VARIANTS,
    Cell,
    Sample,
    median_of,
    net_per_request,
    plan,
    schedule,
)
from bench.scenarios.body_report import write_report
from warmroute.config import Config
from warmroute.request.model import BodyModel, BodyState, parse_body
from warmroute.xds import resources
from warmroute.xds.builder import config_snapshot
from warmroute.xds.snapshot import LISTENER


@pytest.mark.parametrize("size", [300, 1024, 4096, 200 * 1024])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_chat_body_has_the_exact_size_and_model_after_messages(size: int, seed: int) -> None:
    body = chat_body(size, "sim-model", seed=seed)
    assert len(body) == size
    data = json.loads(body)
    assert list(data) == ["messages", "model"]
    assert data["model"] == "sim-model"
    assert [m["role"] for m in data["messages"]] == ["system", "user"]
    assert parse_body(body) == BodyModel(BodyState.MODEL, "sim-model")


def test_chat_body_is_deterministic_and_can_carry_stream() -> None:
    assert chat_body(2048, "m", seed=3) == chat_body(2048, "m", seed=3)
    assert chat_body(2048, "m", seed=3) != chat_body(2048, "m", seed=4)
    streamed = json.loads(chat_body(2048, "m", stream=True))
    assert list(streamed) == ["messages", "model", "stream"] and streamed["stream"] is True


def test_chat_body_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        chat_body(10, "sim-model")


def test_post_request_frames_the_body() -> None:
    raw = post_request("h", "/v1/chat/completions", b'{"a":1}', [("x-model", "m")])
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert "x-model: m" in lines and "content-length: 7" in lines
    assert body == b'{"a":1}'


def test_size_label() -> None:
    assert [size_label(s) for s in (1024, 200 * 1024, 1000)] == ["1 KB", "200 KB", "1000 B"]


def test_envoy_tx_stats_are_split_by_destination() -> None:
    text = (
        "cluster.warmroute_control.upstream_cx_tx_bytes_total: 500\n"
        "cluster.warmroute_pool_bench.upstream_cx_tx_bytes_total: 7000\n"
        "cluster.other.upstream_cx_tx_bytes_total: 3\n"
        "cluster.warmroute_pool_bench.upstream_cx_rx_bytes_total: 99\n"
        "server.uptime: 5\n"
    )
    by_cluster = parse_tx_bytes(text)
    assert by_cluster == {"warmroute_control": 500, "warmroute_pool_bench": 7000, "other": 3}
    assert split_tx(by_cluster) == {"control plane": 500.0, "replicas": 7003.0}
    assert split_tx({"replicas": 10}) == {"replicas": 10.0}  # plain Envoy: no control plane


def test_cpu_per_request_is_net_of_idle() -> None:
    # 0.5 s used over 2 + 3 s at an idle rate of 0.02 CPU, for 400 requests
    assert net_per_request([0.2, 0.3], [2.0, 3.0], 0.02, 400) == pytest.approx(0.4 / 400)
    assert math.isnan(net_per_request([0.1], [1.0], 0.0, 0))
    assert median_of([3.0, 1.0, 2.0]) == 2.0 and math.isnan(median_of([]))


def test_schedule_alternates_direction_and_covers_every_cell() -> None:
    rounds = schedule(3)
    assert len(rounds) == 3
    assert rounds[1] == rounds[0][::-1] and rounds[2] == rounds[0]
    assert len(set(rounds[0])) == len(LOADS) * len(VARIANTS)


def _cfg() -> Config:
    return Config.model_validate(
        {"pools": [{"name": "p", "models": ["m"], "replicas": ["127.0.0.1:9001"]}]}
    )


def _http_filters(listener: object) -> list[hcm_pb2.HttpFilter]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)  # type: ignore[attr-defined]
    return list(hcm.http_filters)


def test_buffered_listener_drops_json_to_metadata_and_allows_mode_override() -> None:
    original = resources.listener(_cfg())
    names = [f.name for f in _http_filters(original)]
    assert resources.JSON_TO_METADATA_FILTER in names  # B, as shipped
    rewritten = buffered_listener(original)
    filters = _http_filters(rewritten)
    assert [f.name for f in filters] == [n for n in names if n != resources.JSON_TO_METADATA_FILTER]
    ext = ext_proc_pb2.ExternalProcessor()
    next(f for f in filters if f.name == resources.EXT_PROC_FILTER).typed_config.Unpack(ext)
    assert ext.allow_mode_override
    assert not ext.metadata_options.HasField("forwarding_namespaces")
    assert list(ext.metadata_options.receiving_namespaces.untyped) == [
        resources.LB_NAMESPACE,
        resources.METADATA_NAMESPACE,
    ]
    assert resources.JSON_TO_METADATA_FILTER in [f.name for f in _http_filters(original)]


def test_buffered_snapshot_rewrites_only_the_listener() -> None:
    snap = config_snapshot(_cfg(), "v1")
    out = buffered_snapshot(snap)
    assert out.label == "v1"
    assert out.version(LISTENER) != snap.version(LISTENER)
    for type_url in snap.resources:
        if type_url != LISTENER:
            assert out.version(type_url) == snap.version(type_url)


@pytest.mark.parametrize(
    ("found", "fields"),
    [
        (BodyModel(BodyState.MODEL, "m"), {"model": "m"}),
        (BodyModel(BodyState.MODEL, "m", stream=True), {"model": "m", "stream": "true"}),
        (BodyModel(BodyState.NO_MODEL), {"body": "no_model"}),
        (BodyModel(BodyState.INVALID), {"body": "invalid"}),
    ],
)
def test_body_model_is_noted_as_json_to_metadata_writes_it(
    found: BodyModel, fields: dict[str, str]
) -> None:
    request = ep.ProcessingRequest()
    request.request_headers.SetInParent()
    note_body_model(request, found)
    noted = request.metadata_context.filter_metadata[resources.BODY_NAMESPACE].fields
    assert {k: v.string_value for k, v in noted.items()} == fields


def test_model_header_is_found_only_with_a_value() -> None:
    headers = ep.HttpHeaders()
    headers.headers.headers.add(key=":path", raw_value=b"/v1/chat/completions")
    assert not has_header(headers, "x-model")
    headers.headers.headers.add(key="x-model", raw_value=b"")
    assert not has_header(headers, "x-model")
    headers.headers.headers.add(key="x-model", raw_value=b"m")
    assert has_header(headers, "x-model")


def test_no_body_notes_nothing() -> None:
    request = ep.ProcessingRequest()
    note_body_model(request, BodyModel(BodyState.NONE))
    assert resources.BODY_NAMESPACE not in request.metadata_context.filter_metadata


def test_headers_decision_becomes_the_body_answer() -> None:
    decision = ep.ProcessingResponse()
    common = decision.request_headers.response
    common.clear_route_cache = True
    common.header_mutation.set_headers.add().header.key = "x-model"
    decision.dynamic_metadata.fields["envoy.lb"].string_value = "127.0.0.1:1"
    out = as_body_response(decision)
    assert out.WhichOneof("response") == "request_body"
    assert out.request_body.response == common
    assert out.dynamic_metadata == decision.dynamic_metadata
    rejection = ep.ProcessingResponse()
    rejection.immediate_response.status.code = 400
    assert as_body_response(rejection) is rejection


def test_results_page_renders_from_samples(tmp_path: Path) -> None:
    p = plan(quick=True)
    cells = {}
    for load in LOADS:
        for i, v in enumerate(VARIANTS):
            cell = Cell(v, *load)
            outcomes = [Outcome(k, k * 0.01, k * 0.01, k * 0.01 + 0.002 * (i + 1), 200)
                        for k in range(100)]  # fmt: skip
            cpu = {"load generator": 0.1, "Envoy": 0.05 * (i + 1), "replicas": 0.1}
            tx = {"replicas": 100.0 * load[0]}
            if v.stack != "plain":
                cpu["control plane"] = 0.1 * i
                tx["control plane"] = 1000.0 * (i + 1)
            run = RateRun(load[1], outcomes, cpu, 1.0)
            cell.samples.append(Sample(run, tx, 1.5, {"Envoy": 0.01, "control plane": 0.01}))
            cells[(load, v.key)] = cell
    path = write_report(p, cells, {size: 1e-4 for size, _ in LOADS}, 1, tmp_path)
    text = path.read_text()
    assert path.name == "body.md"
    assert text.count("| 200 KB @ 100/s |") == 3 * len(VARIANTS)  # latency, cost, per round
    assert "A ext_proc BUFFERED, model in body" in text
    assert "## Conclusion" in text and "## Differences" in text and "nan" not in text
