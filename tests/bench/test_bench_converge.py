"""The pure parts of the config-convergence benchmark (bench/scenarios/converge*.py):
reading Envoy's admin output, what each kind of change must make appear, and the atomic
config write."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.scenarios.converge import write_atomically
from bench.scenarios.converge_plan import (
    KINDS,
    Sample,
    Want,
    changed,
    cluster_hosts,
    parse_duration,
    route_timeouts,
    summary,
    want_of,
)
from bench.scenarios.converge_report import run_record, save

R = [f"127.0.0.1:{9000 + i}" for i in range(6)]


def host(port: int, health: str | None = "HEALTHY") -> dict[str, Any]:
    h: dict[str, Any] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    }
    if health is not None:
        h["health_status"] = {"eds_health_status": health}
    return h


# Shapes as Envoy 1.40 prints them (`/clusters?format=json`, route config dump).
CLUSTERS = {
    "cluster_statuses": [
        {"name": "warmroute_pool_a", "host_statuses": [host(9000), host(9001, "DRAINING")]},
        {"name": "warmroute_control", "host_statuses": [host(18000, None)]},
        {"name": "warmroute_pool_b"},  # no host at all: the key is left out
    ]
}


def route(name: str | None, cluster: str, timeout: str | None) -> dict[str, Any]:
    r: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    if name is not None:
        r["name"] = name
    if timeout is not None:
        r["route"]["timeout"] = timeout
    return r


ROUTES = {
    "configs": [
        {
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
            "version_info": "v3",
            "route_config": {
                "name": "warmroute",
                "virtual_hosts": [
                    {
                        "name": "warmroute",
                        "routes": [
                            {"match": {"path": "/health"}, "direct_response": {"status": 200},
                             "name": "health/health"},
                            route("a/model-a", "warmroute_pool_a", "600s"),
                            route("b/model-b", "warmroute_pool_b", "0.250s"),
                            route("b/bare", "warmroute_pool_b", None),
                            route(None, "warmroute_pool_b", "1s"),
                        ],
                    }
                ],
            },
        }
    ]
}  # fmt: skip


def base() -> dict[str, Any]:
    return {
        "xds": {"variant": "delta"},
        "pools": [
            {"name": "a", "models": ["model-a"], "replicas": R[0:2]},
            {"name": "b", "models": ["model-b"], "replicas": R[2:4], "max_request_seconds": 30},
        ],
    }


def test_parse_duration() -> None:
    assert parse_duration("600s") == 600.0
    assert parse_duration("0.250s") == 0.25
    with pytest.raises(ValueError, match="not a protobuf duration"):
        parse_duration("600")


def test_cluster_hosts_counts_healthy_hosts_only() -> None:
    assert cluster_hosts(CLUSTERS) == {
        "warmroute_pool_a": frozenset({"127.0.0.1:9000"}),  # 9001 is DRAINING
        "warmroute_control": frozenset({"127.0.0.1:18000"}),  # no status: healthy
        "warmroute_pool_b": frozenset(),
    }
    assert cluster_hosts({}) == {}


def test_route_timeouts_by_route_name() -> None:
    assert route_timeouts(ROUTES) == {
        "health/health": None,
        "a/model-a": 600.0,
        "b/model-b": 0.25,
        "b/bare": None,
    }
    assert route_timeouts({"configs": []}) == {}


def test_want_of_a_config_is_its_clusters_and_routes() -> None:
    want = want_of(base(), base())
    assert want.clusters == {
        "warmroute_pool_a": frozenset(R[0:2]),
        "warmroute_pool_b": frozenset(R[2:4]),
    }
    assert want.routes == {"a/model-a": 600.0, "b/model-b": 30.0}


def delta(new: dict[str, Any], old: dict[str, Any]) -> Want:
    return want_of(new, old).minus(want_of(old, new))


def test_each_kind_must_show_exactly_its_change() -> None:
    variants = changed(base(), R[4:6])
    assert set(variants) == set(KINDS) - {"remove pool"}
    expected = {
        "add pool": Want({"warmroute_pool_c": frozenset({R[4]})}, {"c/model-c": 600.0}),
        "route timeout": Want({}, {"a/model-a": 300.0}),
        "move replica": Want(
            {"warmroute_pool_a": frozenset({R[0]}), "warmroute_pool_b": frozenset(R[1:4])}, {}
        ),
        "add replica": Want({"warmroute_pool_a": frozenset({R[0], R[1], R[5]})}, {}),
        "add model alias": Want({}, {"a/alias-a": 600.0}),
    }
    for kind, want in expected.items():
        assert delta(variants[kind], base()) == want, kind
    # Removing the pool again: its cluster and route must be gone.
    assert delta(base(), variants["add pool"]) == Want(
        {"warmroute_pool_c": None}, {"c/model-c": None}
    )


def test_changed_leaves_the_baseline_alone() -> None:
    cfg = base()
    changed(cfg, R[4:6])
    assert cfg == base()


def test_unmet_names_what_is_missing_and_skips_what_was_not_fetched() -> None:
    want = Want(
        {"warmroute_pool_a": frozenset({"127.0.0.1:9000"}), "warmroute_pool_c": None},
        {"a/model-a": 600.0, "a/alias-a": 600.0, "c/model-c": None},
    )
    clusters = cluster_hosts(CLUSTERS)
    routes = route_timeouts(ROUTES)
    assert want.unmet(clusters, routes) == ["route a/alias-a: timeout None != 600.0"]
    routes["c/model-c"] = 600.0
    routes["a/alias-a"] = 600.0
    assert want.unmet(clusters, routes) == ["route c/model-c still present"]
    del routes["c/model-c"]
    assert want.unmet(clusters, routes) == []
    clusters["warmroute_pool_c"] = frozenset()
    assert want.unmet(clusters, None) == ["cluster warmroute_pool_c still present"]
    assert want.unmet(None, None) == []
    moved = Want({"warmroute_pool_b": frozenset({"127.0.0.1:9001"})}, {})
    assert moved.unmet(clusters, None) == [
        "cluster warmroute_pool_b: hosts [] != ['127.0.0.1:9001']"
    ]


def test_write_atomically_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "warmroute.yaml"
    path.write_text("old: true\n")
    write_atomically(path, base())
    assert yaml.safe_load(path.read_text()) == base()
    assert [p.name for p in tmp_path.iterdir()] == ["warmroute.yaml"]


def test_run_record_and_summary() -> None:
    samples = [
        Sample("add pool", [0.5, 1.0]),
        Sample("add pool", [0.25, None]),  # the second Envoy never showed it
        Sample("add pool", [None, 2.0]),
        Sample("route timeout", [None, None]),
    ]
    rec = run_record(samples, 1.0)
    assert rec["soak_seconds"] == 1.0
    assert rec["kinds"]["add pool"] == {"all": [1.0], "first": [0.5, 0.25, 2.0], "timeouts": 2}
    assert rec["kinds"]["route timeout"] == {"all": [], "first": [], "timeouts": 1}
    assert summary([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 4.6, 5.0)
    assert all(math.isnan(v) for v in summary([]))


def test_save_keeps_one_run_per_label_and_shows_them_side_by_side(tmp_path: Path) -> None:
    def run(seconds: float, commit: str) -> dict[str, Any]:
        samples = [Sample("add pool", [seconds / 2, seconds])] * 3
        return {"src": "/src", "commit": commit, "date": "d", "reps": 3, "command": "c",
                "results": [run_record(samples, 1.0)]}  # fmt: skip

    save(tmp_path, "after", run(9.0, "old"))
    save(tmp_path, "before", run(2.0, "b"))
    page = save(tmp_path, "after", run(0.05, "new")).read_text()
    data = json.loads((tmp_path / "converge.json").read_text())
    assert sorted(data["runs"]) == ["after", "before"]
    assert data["runs"]["after"]["commit"] == "new"
    # before's column first; "add pool" measured, the other kinds not run: dashes.
    assert "| add pool | 2,000 / 2,000 / 2,000 | 1,000 | 50 / 50 / 50 | 25 |" in page
    assert "| route timeout | — | — | — | — |" in page
    assert "9,000" not in page
