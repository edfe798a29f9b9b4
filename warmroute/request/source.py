"""A request as the director reads it: the front ends' ext_proc messages behind one view.

The director (``warmroute.director``) asks a request's ``source`` only what its pool needs:
a header for a priority band, a fairness key or a session; the body's size and completion
bound for a token budget; the prompt for prefix affinity. So a pool without those
features never pays for reading them, and the director never sees a protocol message.

* ``EnvoyRequest``: own-Envoy mode, request headers plus what json_to_metadata forwarded
  (``warmroute.body``), and the body only if the processor asked Envoy for it;
* ``PickedRequest``: endpoint-picker mode, request headers plus the buffered body.

Header names are lower case (as Envoy sends them); the first occurrence wins.
"""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct

from warmroute.request import prompt, tokens


def header_value(h: object) -> str:
    """One ``HeaderValue``'s text (``raw_value`` as Envoy sends it, else ``value``)."""
    raw: bytes = h.raw_value  # type: ignore[attr-defined]
    if raw:
        return raw.decode("utf-8", "replace")
    return str(h.value)  # type: ignore[attr-defined]


def first_header(headers: ep.HttpHeaders | None, name: str) -> str | None:
    """The first value of header ``name`` in ``headers``, or None."""
    if headers is None:
        return None
    for h in headers.headers.headers:
        if h.key == name:
            return header_value(h)
    return None


class EnvoyRequest:
    """Own-Envoy mode's view of a request (module doc). ``body`` is the request's whole
    body when the processor asked for it (prefix affinity), else None."""

    __slots__ = ("_found", "_headers", "body")

    def __init__(
        self, headers: ep.HttpHeaders, found: Struct | None, body: bytes | None = None
    ) -> None:
        self._headers = headers
        self._found = found
        self.body = body

    def header(self, name: str) -> str | None:
        return first_header(self._headers, name)

    def prompt(self, limit: int) -> str:
        return prompt.prompt_text(self.body, limit) if self.body else ""

    def body_size(self) -> int:
        return tokens.content_length(self._headers.headers.headers)

    def max_tokens(self) -> int | None:
        return tokens.max_tokens_from_metadata(self._found)


class PickedRequest:
    """Endpoint-picker mode's view of a request (module doc). ``body`` is None for a
    request routed on its headers alone (no body)."""

    __slots__ = ("_headers", "body")

    def __init__(self, headers: ep.HttpHeaders | None, body: bytes | bytearray | None) -> None:
        self._headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return first_header(self._headers, name)

    def prompt(self, limit: int) -> str:
        return prompt.prompt_text(self.body, limit) if self.body else ""

    def body_size(self) -> int:
        return len(self.body) if self.body else 0

    def max_tokens(self) -> int | None:
        return tokens.max_tokens_from_body(self.body) if self.body else None
