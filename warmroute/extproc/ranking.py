"""A waiting request's place in a pool with priority bands, read from its headers.

Shared by own-Envoy mode (``processor``) and endpoint-picker mode (``epp.protocol``), so
both honour the same headers the same way. Called only for a request that has to wait in
a pool with a ``priority`` block: any other request never pays for it.
"""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from warmroute.state.priority import MAX_KEY_LEN, PrioritySpec


def rank(headers: ep.HttpHeaders, priority: PrioritySpec, model: str | None) -> tuple[int, str]:
    """(band index, fairness key): the band the band header names (else the model's, else
    the default) and the fairness header's value, cut to ``MAX_KEY_LEN``; first occurrence
    of each header wins. The headers only order the queue; they never choose a replica."""
    band_header, key_header = priority.header, priority.fairness_header
    named: str | None = None
    key: str | None = None
    for h in headers.headers.headers:
        name = h.key
        if name == band_header and named is None:
            named = _value(h)
        elif name == key_header and key is None:
            key = _value(h)[:MAX_KEY_LEN]
    return priority.choose(named, model), key or ""


def _value(h: object) -> str:
    raw: bytes = h.raw_value  # type: ignore[attr-defined]
    return raw.decode("utf-8", "replace") if raw else str(h.value)  # type: ignore[attr-defined]
