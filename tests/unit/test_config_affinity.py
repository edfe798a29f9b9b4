"""The ``affinity:`` block and ``policy: prefix_affinity``: what they map to, and errors."""

from __future__ import annotations

import pytest

from warmroute import config
from warmroute.errors import ConfigError
from warmroute.state.affinity import AffinitySpec

POOL = "pools:\n  - name: p\n    models: [chat]\n"


def test_prefix_affinity_gets_the_defaults() -> None:
    spec = config.parse(POOL + "    policy: prefix_affinity\n").specs()[0]
    assert spec.policy == "prefix_affinity"
    assert spec.affinity == AffinitySpec()


def test_affinity_block_maps_to_the_spec() -> None:
    cfg = config.parse(
        POOL
        + "    policy: prefix_affinity\n"
        + "    affinity: {max_imbalance: 0, block_chars: 0, max_blocks: 8,"
        + " session_header: x-session-id, memory: 10}\n"
    )
    assert cfg.specs()[0].affinity == AffinitySpec(0, 0, 8, "x-session-id", 10)


def test_other_policies_have_no_affinity() -> None:
    assert config.parse(POOL).specs()[0].affinity is None
    assert config.parse(POOL + "    policy: first_free\n").specs()[0].affinity is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    affinity: {max_imbalance: 1}\n", "only applies with `policy: prefix_affinity`"),
        ("    policy: prefix_affinity\n    affinity: {max_imbalance: -1}\n", "max_imbalance"),
        ("    policy: prefix_affinity\n    affinity: {session_header: X-Bad}\n", "session_header"),
        ("    policy: prefix_affinity\n    affinity: {memory: 0}\n", "memory"),
        ("    policy: nearest\n", "policy"),
    ],
)
def test_bad_affinity_config_is_refused_by_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(POOL + extra)
