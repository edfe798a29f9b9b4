"""What a request says about its size, for pools with ``tokens:`` (``warmroute.state.tokens``).

The director prices a request as its prompt estimated from the body's size plus the
completion it may ask for (``TokenSpec.cost``); this module reads those two numbers from
what each front end has: own-Envoy mode the ``content-length`` header and the numbers
Envoy's json_to_metadata filter forwards (``warmroute.body`` metadata), EPP mode the body
it buffers. The completion bound is ``max_completion_tokens`` if the request names one,
else ``max_tokens`` (the order vLLM reads them in; Anthropic's API has only
``max_tokens``); None: the pool's default. Only pools with a token budget ask for them,
through the request source (``warmroute.request.source``): other pools never pay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from google.protobuf.struct_pb2 import Struct

from warmroute.state.tokens import MAX_TOKEN_FIELDS


def content_length(headers: Iterable[object]) -> int:
    """Own-Envoy mode: the body's size from ``content-length`` (absent, e.g. a chunked
    upload, or nonsense: 0, so only the completion is counted)."""
    for h in headers:
        if h.key == "content-length":  # type: ignore[attr-defined]
            raw: bytes = h.raw_value or h.value.encode()  # type: ignore[attr-defined]
            return int(raw) if raw.isdigit() else 0
    return 0


def max_tokens_from_metadata(found: Struct | None) -> int | None:
    """Own-Envoy mode: the completion bound json_to_metadata forwarded, if a count."""
    if found is None:
        return None
    fields = found.fields
    for name in MAX_TOKEN_FIELDS:
        value = fields.get(name)
        if value is not None and value.WhichOneof("kind") == "number_value":
            count = _count(value.number_value)
            if count is not None:
                return count
    return None


def max_tokens_from_body(body: bytes | bytearray) -> int | None:
    """EPP mode: the completion bound the buffered JSON body names, if a count."""
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    for name in MAX_TOKEN_FIELDS:
        value = data.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            count = _count(value)
            if count is not None:
                return count
    return None


def _count(value: float) -> int | None:
    """A token count from a JSON number: None unless finite and not negative."""
    if not math.isfinite(value) or value < 0:
        return None
    return math.ceil(value)
