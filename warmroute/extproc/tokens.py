"""A request's token cost for pools with ``tokens:`` (``warmroute.state.tokens``).

The cost is the prompt estimated from the body's size plus the completion the request
may ask for: ``max_completion_tokens`` if it names one, else ``max_tokens`` (the order
vLLM reads them in; Anthropic's API has only ``max_tokens``), else the pool's default.
Both front ends use this module: own-Envoy mode reads the numbers from the
``warmroute.body`` metadata Envoy's json_to_metadata filter fills and the size from the
``content-length`` header; EPP mode reads both from the body it buffers. Only pools with
a token budget call it: other pools never pay for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from google.protobuf.struct_pb2 import Struct

from warmroute.state.tokens import MAX_TOKEN_FIELDS, TokenSpec


def from_metadata(spec: TokenSpec, headers: Iterable[object], found: Struct | None) -> int:
    """Own-Envoy mode: the cost from ``content-length`` (absent, e.g. a chunked upload:
    0, so only the completion is counted) and json_to_metadata's fields."""
    size = 0
    for h in headers:
        if h.key == "content-length":  # type: ignore[attr-defined]
            raw: bytes = h.raw_value or h.value.encode()  # type: ignore[attr-defined]
            size = int(raw) if raw.isdigit() else 0
            break
    max_tokens = None
    if found is not None:
        fields = found.fields
        for name in MAX_TOKEN_FIELDS:
            value = fields.get(name)
            if value is not None and value.WhichOneof("kind") == "number_value":
                max_tokens = _count(value.number_value)
                if max_tokens is not None:
                    break
    return spec.cost(size, max_tokens)


def from_body(spec: TokenSpec, body: bytes | bytearray) -> int:
    """EPP mode: the cost from the buffered body itself."""
    max_tokens = None
    if body:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict):
            for name in MAX_TOKEN_FIELDS:
                value = data.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    max_tokens = _count(value)
                    if max_tokens is not None:
                        break
    return spec.cost(len(body), max_tokens)


def _count(value: float) -> int | None:
    """A token count from a JSON number: None unless finite and not negative."""
    if not math.isfinite(value) or value < 0:
        return None
    return math.ceil(value)
