"""Choosing the model: header, JSON body, or both (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmroute.errors import InvalidBody, MissingModel, ModelMismatch, RequestRejected
from warmroute.extproc import models_api
from warmroute.request.model import (
    NO_BODY,
    BodyModel,
    BodyState,
    choose_model,
    parse_body,
)
from warmroute.state import PoolView, RegistryView, ReplicaView

H = "x-model"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", NO_BODY),
        (b'{"model": "m", "stream": true}', BodyModel(BodyState.MODEL, "m", True)),
        (b'{"messages": [], "model": "m"}', BodyModel(BodyState.MODEL, "m", False)),
        (b'{"model": "m", "stream": "yes"}', BodyModel(BodyState.MODEL, "m", False)),
        (b'{"prompt": "x"}', BodyModel(BodyState.NO_MODEL)),
        (b'{"model": ""}', BodyModel(BodyState.NO_MODEL)),
        (b'{"model": 3}', BodyModel(BodyState.NO_MODEL)),
        (b"[1, 2]", BodyModel(BodyState.INVALID)),
        (b'{"model": "m"', BodyModel(BodyState.INVALID)),
        (b"\xff\xfe", BodyModel(BodyState.INVALID)),
    ],
)
def test_parse_body(raw: bytes, expected: BodyModel) -> None:
    assert parse_body(raw) == expected


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        ("m", NO_BODY, "m"),
        ("m", BodyModel(BodyState.MODEL, "m"), "m"),
        ("m", BodyModel(BodyState.NO_MODEL), "m"),
        ("m", BodyModel(BodyState.INVALID), "m"),  # the header routes a non-JSON body
        (None, BodyModel(BodyState.MODEL, "b"), "b"),
        ("", BodyModel(BodyState.MODEL, "b"), "b"),
    ],
)
def test_choose_model(header: str | None, body: BodyModel, expected: str) -> None:
    assert choose_model(header, body, H) == expected


@pytest.mark.parametrize(
    ("header", "body", "error"),
    [
        ("m", BodyModel(BodyState.MODEL, "other"), ModelMismatch),
        (None, NO_BODY, MissingModel),
        (None, BodyModel(BodyState.NO_MODEL), MissingModel),
        (None, BodyModel(BodyState.INVALID), InvalidBody),
    ],
)
def test_choose_model_refuses(
    header: str | None, body: BodyModel, error: type[RequestRejected]
) -> None:
    with pytest.raises(error) as info:
        choose_model(header, body, H)
    assert info.value.http_status == 400


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_header_and_body_agree_or_refuse(header: str, body_model: str) -> None:
    raw = json.dumps({"model": body_model}).encode()
    body = parse_body(raw)
    if header == body_model:
        assert choose_model(header, body, H) == header
    else:
        with pytest.raises(ModelMismatch):
            choose_model(header, body, H)


def _view() -> RegistryView:
    reps = (
        ReplicaView("10.0.0.1:8000", "warm", 2, 1, 0, 5, free=1),
        ReplicaView("10.0.0.2:8000", "warm", 2, 0, 1, 5, free=1),
        ReplicaView("10.0.0.3:8000", "loading", 4, 0, 0, 0, free=0),
    )
    pool = PoolView("p", ("a", "b"), reps, 3, 100, 0, 0, 0, 0, 0, 0, 0)
    return RegistryView((pool,), 1)


def test_model_list_counts_only_warm_capacity() -> None:
    listed = json.loads(models_api.model_list(_view()))
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["a", "b"]
    first = listed["data"][0]
    assert first["object"] == "model" and first["pool"] == "p"
    assert (first["warm_replicas"], first["warm_slots"], first["free_slots"]) == (2, 4, 2)
    assert first["waiting"] == 3


def test_model_object() -> None:
    assert json.loads(models_api.model_object(_view(), "b") or b"")["id"] == "b"
    assert models_api.model_object(_view(), "zzz") is None
