"""What the simulated replica received: the last requests' headers and bodies, bounded.

End-to-end tests read it (``GET /received`` or :meth:`SimReplica.received`) to prove what
reached the replica through Envoy: a large prompt byte-identical (SHA-256 and length), a header
present or stripped. Owned by one event loop; entries are immutable. Credentials are not
kept: the values of :data:`REDACTED_HEADERS` are replaced (the header's presence still shows).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CAPACITY = 64
"""Requests remembered; older ones are dropped first."""

KEEP_BODY_BYTES = 64 * 1024
"""Bodies up to this size are kept whole; larger ones only as SHA-256 and length."""

REDACTED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
)
"""Headers whose values are recorded as ``[redacted]``."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the replica read it, before it decided anything about it."""

    seq: int  # 1, 2, ... in arrival order since start or the last reset
    method: str
    path: str
    headers: Mapping[str, str]  # names lower-cased, repeats joined by ", ", secrets redacted
    body_bytes: int
    body_sha256: str  # hex
    body: bytes | None  # the whole body if at most KEEP_BODY_BYTES, else None

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; ``body`` as UTF-8 text (undecodable bytes replaced; the hash is exact)."""
        body = None if self.body is None else self.body.decode("utf-8", "replace")
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "request_id": self.request_id,
            "headers": dict(self.headers),
            "body_bytes": self.body_bytes,
            "body_sha256": self.body_sha256,
            "body": body,
        }


class RequestLog:
    """The last ``capacity`` requests, oldest first. Not thread-safe (one event loop)."""

    def __init__(self, capacity: int = CAPACITY, keep_body_bytes: int = KEEP_BODY_BYTES) -> None:
        self._entries: collections.deque[ReceivedRequest] = collections.deque(maxlen=capacity)
        self._keep = keep_body_bytes
        self._seq = 0

    def record(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> ReceivedRequest:
        """Append one request (``headers`` flattened, names lower-cased); return its entry."""
        self._seq += 1
        entry = ReceivedRequest(
            seq=self._seq,
            method=method,
            path=path,
            headers={k: "[redacted]" if k in REDACTED_HEADERS else v for k, v in headers.items()},
            body_bytes=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body=body if len(body) <= self._keep else None,
        )
        self._entries.append(entry)
        return entry

    def entries(self) -> tuple[ReceivedRequest, ...]:
        return tuple(self._entries)

    def clear(self) -> None:
        """Forget every entry; numbering starts again at 1."""
        self._entries.clear()
        self._seq = 0
