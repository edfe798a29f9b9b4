"""The /v1/models parser against a real vLLM's answer (tests/fixtures/vllm/models.json) and
the shapes other servers send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from warmroute.discovery.served_models import ServedModel, parse_served_models

VLLM = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"


def test_a_real_vllm_lists_its_base_model_and_its_adapters() -> None:
    served = parse_served_models(json.loads((VLLM / "models.json").read_text()))
    assert served.bases == ("tiny",)
    assert served.adapters == {"a0": "tiny", "a1": "tiny"}
    assert served.ids == {"tiny", "a0", "a1"}
    base, a0 = served.models[0], served.models[1]
    assert (base.parent, base.max_model_len, base.is_adapter) == (None, 1024, False)
    assert a0.is_adapter and a0.root is not None and a0.root.endswith("adapter-0")


def test_a_server_without_parent_fields_lists_base_models_only() -> None:
    served = parse_served_models({"object": "list", "data": [{"id": "m", "object": "model"}]})
    assert served.models == (ServedModel("m"),)
    assert served.adapters == {}


def test_wrongly_typed_optional_fields_read_as_absent() -> None:
    doc = {"data": [{"id": "m", "parent": 3, "root": None, "max_model_len": True}]}
    assert parse_served_models(doc).models == (ServedModel("m"),)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "expected a JSON object"),
        ({"object": "list"}, "'data' list"),
        ({"data": [{"id": "m"}, {"object": "model"}]}, r"data\[1\]"),
        ({"data": ["m"]}, r"data\[0\]"),
    ],
)
def test_other_shapes_are_refused_with_what_is_wrong(doc: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_served_models(doc)
