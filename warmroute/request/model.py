"""Which model a request asks for: the model header, the JSON body's ``model``, or both.

Real inference clients (the OpenAI and Anthropic SDKs, LangChain, curl as the providers'
docs show it) send the model only in the JSON body; warmroute's own header still works and
wins for routing, but it must agree with the body when both are present: a proxy that
routed by the header while the replica served the body's model would bill and batch the
request against the wrong pool without anyone noticing.

Both delivery paths use this module: in own-Envoy mode Envoy's ``json_to_metadata`` filter
reads the body and hands us ``BodyModel`` through dynamic metadata; in EPP mode the
streamed body is parsed here with ``parse_body``. Pure functions, no I/O.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from warmroute.errors import InvalidBody, MissingModel, ModelMismatch

# The paths whose requests are inference work (OpenAI and Anthropic shapes).
INFERENCE_PATHS = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
MODELS_PATH = "/v1/models"
MAX_MODEL_LEN = 256


class BodyState(enum.Enum):
    """What reading the body found."""

    NONE = "none"  # no body, or not a body we read (e.g. not JSON content)
    MODEL = "model"  # a JSON object with a string ``model``
    NO_MODEL = "no_model"  # a JSON object without a usable ``model``
    INVALID = "invalid"  # the body is not a JSON object


@dataclass(frozen=True, slots=True)
class BodyModel:
    state: BodyState
    model: str | None = None
    stream: bool = False


NO_BODY = BodyModel(BodyState.NONE)


def parse_body(body: bytes | bytearray) -> BodyModel:
    """Read ``model`` and ``stream`` from a complete JSON request body."""
    if not body:
        return NO_BODY
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return BodyModel(BodyState.INVALID)
    if not isinstance(data, dict):
        return BodyModel(BodyState.INVALID)
    stream = data.get("stream") is True
    model = data.get("model")
    if not isinstance(model, str) or not model:
        return BodyModel(BodyState.NO_MODEL, stream=stream)
    return BodyModel(BodyState.MODEL, model, stream)


def choose_model(header_model: str | None, body: BodyModel, header_name: str) -> str:
    """The model to route by. Raises MissingModel, InvalidBody or ModelMismatch (all 400).

    The header wins for routing, but a body that names another model is refused. A body
    that is not a JSON object is refused only when the model must come from it.
    """
    if header_model:
        if body.state is BodyState.MODEL and body.model != header_model:
            raise ModelMismatch(
                f"the {header_name!r} header names {header_model[:MAX_MODEL_LEN]!r} but the "
                f"body's model is {_short(body.model)!r}; send one model"
            )
        return header_model
    if body.state is BodyState.MODEL:
        assert body.model is not None
        return body.model
    if body.state is BodyState.INVALID:
        raise InvalidBody(
            "the request body is not a JSON object (send it with content-type application/json)"
        )
    raise MissingModel(f'name the model in the JSON body\'s "model" or the {header_name!r} header')


def _short(model: str | None) -> str:
    return (model or "")[:MAX_MODEL_LEN]
