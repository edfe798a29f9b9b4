"""The ``priority:`` block of a pool: what it maps to in the core, and errors by key path."""

from __future__ import annotations

import pytest

from warmroute import config
from warmroute.errors import ConfigError
from warmroute.state.priority import BandSpec, PrioritySpec

POOL = (
    "pools:\n  - name: p\n    models: [chat, bulk]\n"
    "    queue: {max_waiting: 50, timeout_seconds: 20}\n"
)


def test_priority_block_maps_to_the_pool_spec() -> None:
    cfg = config.parse(
        POOL
        + "    priority:\n"
        + "      bands:\n"
        + "        - {name: interactive, max_waiting: 10, timeout_seconds: 5}\n"
        + "        - {name: batch}\n"
        + "      header: x-priority\n"
        + "      models: {chat: interactive}\n"
        + "      fairness: {header: x-tenant}\n"
    )
    spec = cfg.specs()[0]
    assert spec.priority == PrioritySpec(
        bands=(BandSpec("interactive", 10, 5.0), BandSpec("batch", 50, 20.0)),
        default=1,  # the last band unless named
        header="x-priority",
        model_bands=(("chat", 0),),
        fairness_header="x-tenant",
    )
    assert spec.max_waiting == 50


def test_without_a_priority_block_the_pool_has_one_fifo() -> None:
    assert config.parse(POOL).specs()[0].priority is None


def test_the_longest_band_timeout_bounds_envoys_ext_proc_wait() -> None:
    cfg = config.parse(
        POOL + "    priority: {bands: [{name: a, timeout_seconds: 90}, {name: b}], default: a}\n"
    )
    assert cfg.max_queue_timeout == 90.0
    priority = cfg.specs()[0].priority
    assert priority is not None and priority.default == 0


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(
            "{bands: [{name: a}], default: z}",
            "pools[0].priority.default (line 5): default band 'z' is not one of ['a']",
            id="unknown-default",
        ),
        pytest.param(
            "{bands: [{name: a}], models: {chat: z}}",
            "pools[0].priority.models.chat (line 5): band 'z' is not one of ['a']",
            id="unknown-model-band",
        ),
        pytest.param(
            "{bands: [{name: a}, {name: a}]}",
            "pools[0].priority.bands[1].name (line 5): band 'a' is listed twice",
            id="duplicate",
        ),
        pytest.param("{bands: []}", "pools[0].priority.bands (line 5)", id="no-bands"),
        pytest.param(
            "{bands: [{name: a, max_waiting: -1}]}",
            "pools[0].priority.bands[0].max_waiting (line 5)",
            id="negative-cap",
        ),
        pytest.param(
            "{bands: [{name: a}], header: X-Priority}",
            "pools[0].priority.header (line 5)",
            id="header-not-lowercase",
        ),
        pytest.param(
            "{bands: [{name: a}], fairness: {}}",
            "pools[0].priority.fairness.header (line 5): required key is missing",
            id="fairness-without-header",
        ),
    ],
)
def test_errors_name_the_key(block: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(POOL + f"    priority: {block}\n", "pools.yaml")
    assert expected in str(info.value), str(info.value)
