"""Envoy's local reply mapping for "warmroute unreachable": the listener we build, the
snippet we ship for gateways and the gateway config the end-to-end tests run agree.

What Envoy does with them is tested with the real binary in
tests/e2e/test_control_plane_unreachable.py."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from warmroute import config
from warmroute.config import Config
from warmroute.xds import local_replies, resources

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "deploy" / "epp" / "gateway-local-reply.yaml"
GATEWAY_FIXTURE = ROOT / "tests" / "e2e" / "fixtures" / "epp-envoy.yaml"


def _unavailable_mapper(cfg: Config) -> dict[str, Any]:
    hcm = resources.http_connection_manager(cfg)
    mappers = json_format.MessageToDict(hcm.local_reply_config, preserving_proto_field_name=True)
    found = [m for m in mappers["mappers"] if "extension_filter" in m["filter"]]
    assert len(found) == 1
    return found[0]


def test_the_listener_answers_warmroute_unreachable_with_the_configured_retry_after() -> None:
    doc = config.default().model_dump()
    doc["routing"]["unreachable_retry_after_seconds"] = 7
    mapper = _unavailable_mapper(Config.model_validate(doc))
    cel = mapper["filter"]["extension_filter"]["typed_config"]
    assert cel["expression"] == local_replies.UNAVAILABLE_EXPRESSION
    assert mapper["status_code"] == 503
    assert mapper["headers_to_add"][0]["header"] == {"key": "retry-after", "value": "7"}
    body = mapper["body_format_override"]
    assert body["content_type"] == "application/json"
    error = json.loads(body["text_format_source"]["inline_string"])["error"]
    assert error == {
        "code": "control_plane_unavailable",
        "message": "the routing control plane (warmroute) could not be reached",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "retry_after_seconds": 7,
    }


def test_retry_after_defaults_to_one_second() -> None:
    mapper = _unavailable_mapper(config.default())
    assert mapper["headers_to_add"][0]["header"]["value"] == "1"


def test_the_body_too_large_and_removed_pool_mappers_come_first_unchanged() -> None:
    hcm = resources.http_connection_manager(config.default())
    first, second, _ = hcm.local_reply_config.mappers
    assert first.filter.status_code_filter.comparison.value.default_value == 413
    assert "body_too_large" in first.body_format_override.text_format_source.inline_string
    assert list(second.filter.response_flag_filter.flags) == ["NC"]
    assert second.status_code.value == 404


def test_the_gateway_snippet_is_current_and_escapes_client_request_ids() -> None:
    assert SNIPPET.read_text() == local_replies.gateway_yaml(), (
        "regenerate with: python -c 'from warmroute.xds.local_replies import gateway_yaml; "
        'print(gateway_yaml(), end="")\' > deploy/epp/gateway-local-reply.yaml'
    )
    mapper = yaml.safe_load(SNIPPET.read_text())["local_reply_config"]["mappers"][0]
    # json_format, not a text template: a gateway may keep a client's x-request-id.
    assert mapper["body_format_override"]["json_format"]["error"]["request_id"] == (
        "%REQ(X-REQUEST-ID)%"
    )


def test_the_gateway_config_the_e2e_tests_run_carries_the_snippet() -> None:
    ports = dict.fromkeys(("LISTEN_PORT", "ADMIN_PORT", "PICKER_PORT"), 1)
    fixture = yaml.safe_load(string.Template(GATEWAY_FIXTURE.read_text()).substitute(ports))
    listener = fixture["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["local_reply_config"] == yaml.safe_load(SNIPPET.read_text())["local_reply_config"]
