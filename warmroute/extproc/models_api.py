"""``GET /v1/models``: the OpenAI model list, answered by warmroute itself.

A client (the OpenAI SDK's ``models.list()``, a UI's model picker) asks which models it can
use. Forwarding that to one replica would take a GPU slot for a question only the control
plane can answer for the whole fleet, so ext_proc answers it from the registry's view.
"""

from __future__ import annotations

import json
from typing import Any

from warmroute.state import Phase, PoolView, RegistryView

_WARM = Phase.WARM.value


def _entry(model: str, pool: PoolView) -> dict[str, Any]:
    warm = [r for r in pool.replicas if r.phase == _WARM]
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "warmroute",
        # warmroute's own fields (OpenAI clients ignore unknown keys):
        "pool": pool.name,
        "warm_replicas": len(warm),
        "warm_slots": sum(r.slots for r in warm),
        # Address-wide: a replica another pool also leases is as busy here as there.
        "free_slots": sum(r.free for r in warm),
        "waiting": pool.waiting,
    }


def model_list(view: RegistryView) -> bytes:
    data = [_entry(m, p) for p in view.pools for m in p.models]
    return json.dumps({"object": "list", "data": data}).encode() + b"\n"


def model_object(view: RegistryView, model: str) -> bytes | None:
    """One model (``GET /v1/models/{model}``), or None if no pool serves it."""
    for pool in view.pools:
        if model in pool.models:
            return json.dumps(_entry(model, pool)).encode() + b"\n"
    return None
