"""``envoy.nodes``: per-node listen/admin, by node id or node cluster."""

from __future__ import annotations

import pytest

from warmroute import config as config_mod
from warmroute.config import NodeAddresses
from warmroute.errors import ConfigError
from warmroute.xds.builder import config_snapshot
from warmroute.xds.snapshot import LISTENER

BASE = """
envoy:
  listen: 127.0.0.1:8080
  admin: 127.0.0.1:19000
  nodes:
{nodes}
pools:
  - {{name: p, models: [m], replicas: ["10.0.0.1:80"]}}
"""


def _cfg(nodes: str) -> config_mod.Config:
    return config_mod.parse(BASE.format(nodes=nodes), "f.yaml")


def test_an_id_match_wins_over_a_cluster_match_and_unset_keys_fall_back() -> None:
    envoy = _cfg(
        "    - {cluster: zone-b, listen: 127.0.0.1:8082, admin: 127.0.0.1:19002}\n"
        "    - {id: a, listen: 127.0.0.1:8081}"
    ).envoy
    assert envoy.for_node("a", "zone-b") == NodeAddresses("127.0.0.1:8081", "127.0.0.1:19000")
    assert envoy.for_node("b", "zone-b") == NodeAddresses("127.0.0.1:8082", "127.0.0.1:19002")
    assert envoy.for_node("c", "zone-c") == NodeAddresses("127.0.0.1:8080", "127.0.0.1:19000")


@pytest.mark.parametrize(
    ("nodes", "where", "expected"),
    [
        (
            "    - {listen: 127.0.0.1:1}",
            "envoy.nodes[0] (line 6)",
            "exactly one of `id` or `cluster`",
        ),
        (
            "    - {id: a, cluster: z}",
            "envoy.nodes[0] (line 6)",
            "exactly one of `id` or `cluster`",
        ),
        (
            "    - {id: a, listen: 127.0.0.1:1}\n    - {id: a, listen: 127.0.0.1:2}",
            "envoy.nodes[1].id (line 7)",
            "id 'a' is already chosen by an earlier entry",
        ),
        ("    - {id: a, listen: nowhere}", "envoy.nodes[0].listen", "host:port"),
    ],
)
def test_bad_node_entries_are_located(nodes: str, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(nodes)
    (problem,) = err.value.problems
    assert problem.startswith(where), problem
    assert expected in problem


def test_only_nodes_that_listen_elsewhere_get_their_own_listener() -> None:
    cfg = _cfg(
        "    - {id: a, listen: 127.0.0.1:8081}\n"
        "    - {id: same, listen: 127.0.0.1:8080}\n"
        "    - {cluster: z, admin: 127.0.0.1:19002}"
    )
    snap = config_snapshot(cfg, "v1")
    assert [(o.node_id, o.cluster) for o in snap.overrides] == [("a", None)]
    mine = snap.for_node("a", "z")
    assert mine.version(LISTENER) != snap.version(LISTENER)
    assert snap.for_node("same", "z") is snap
    assert snap.for_node("b") is snap
