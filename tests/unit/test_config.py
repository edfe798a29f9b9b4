from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from warmroute import config
from warmroute.errors import ConfigError


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "pools.yaml")
    return info.value


def test_builtin_demo_config_is_valid() -> None:
    cfg = config.default()
    assert [r.address for r in cfg.pools[0].all_replicas()] == [
        f"127.0.0.1:{9001 + i}" for i in range(4)
    ]
    assert cfg.specs()[0].models == ("sim-model",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pools:\n  - name: a\n    models: [m]\n    queue: {max_waiting: -1}\n",
            "pools[0].queue.max_waiting (line 4): Input should be greater than or equal to 0",
        ),
        (
            "pools:\n  - name: a\n    models: [m]\n    slotz: 2\n",
            "pools[0].slotz (line 4): unknown key",
        ),
        ("pools:\n  - name: a\n", "pools[0].models (line 2): required key is missing"),
        (
            "pools:\n  - name: a\n    models: [m]\n    replicas: [localhost:80]\n",
            "pools[0].replicas[0].address (line 4): expected ip:port",
        ),
        ("envoy: {listen: 1.2.3.4}\npools: []\n", "envoy.listen (line 1): expected host:port"),
        ("pools: [\n", "not valid YAML (line 2"),
        ("- 1\n- 2\n", "expected a mapping at the top level, got a list"),
        ("{}", "pools (line 1): required key is missing"),
        (
            "pools:\n  - {name: a, models: [m]}\n  - {name: b, models: [m]}\n",
            "model 'm' is served by pools 'a' and 'b'",
        ),
    ],
)
def test_errors_name_file_key_line_and_expectation(text: str, expected: str) -> None:
    err = _error(text)
    assert str(err).startswith("invalid config pools.yaml:")
    assert expected in str(err), str(err)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        config.load(tmp_path / "nope.yaml")


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(config.example())
    assert config.load(path).pools[0].name == "demo"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "models", "slots", "queue", "replicas", "pools", "x"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_document_either_validates_or_raises_config_error(doc: object) -> None:
    text = yaml.safe_dump({"pools": doc} if not isinstance(doc, dict) else doc)
    try:
        config.parse(text, "fuzz.yaml")
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc)


def test_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(root.glob("*.yaml")):
        assert config.load(path).pools


def test_error_paths_keep_keys_that_start_like_type_tags_and_drop_union_tags() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(
            "pools: [{name: a, models: [m], simulate: {streamx: 1},"
            " kubernetes: {selector: {a: b}, port: [1]}}]"
        )
    text = str(info.value)
    assert "pools[0].simulate.streamx" in text
    assert "pools[0].kubernetes.port (line 1)" in text
    assert ".port.int" not in text


@pytest.mark.parametrize(
    ("second_pool", "where"),
    [
        ("{name: a, models: [n]}", "pools[1].name (line 3)"),
        ("{name: b, models: [n, m]}", "pools[1].models[1] (line 3)"),
        ("{name: b, models: [n], replicas: [10.0.0.2:80, 10.0.0.1:80]}", "pools[1].replicas[1]"),
    ],
)
def test_duplicates_are_located_at_their_second_occurrence(second_pool: str, where: str) -> None:
    text = f"pools:\n  - {{name: a, models: [m], replicas: [10.0.0.1:80]}}\n  - {second_pool}\n"
    with pytest.raises(ConfigError) as info:
        config.parse(text, "x.yaml")
    (problem,) = info.value.problems
    assert problem.startswith(where), problem
    assert "got {" not in problem
