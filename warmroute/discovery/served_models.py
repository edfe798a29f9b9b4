"""What a model server serves, from its OpenAI-style ``GET /v1/models`` answer.

Pure: the decoded JSON document in, a frozen :class:`ServedModels` out. vLLM lists its base
model(s) with ``parent: null`` and every LoRA adapter it has loaded (at start with
``--lora-modules``, or at run time with ``POST /v1/load_lora_adapter``) with ``parent``
naming the base model and ``root`` the adapter's path (``tests/fixtures/vllm/models.json``).
Servers that omit ``parent`` (SGLang, TGI, the OpenAI API itself) list base models only.
A listed adapter is one the server will accept by name; it is not necessarily resident in
a GPU batch slot (vLLM's ``--max-loras`` bounds those, see :mod:`.signals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServedModel:
    """One entry: ``id`` is the name requests use; ``parent`` is the base model of an
    adapter (None for a base model); ``root`` where it was loaded from, if said."""

    id: str
    parent: str | None = None
    root: str | None = None
    max_model_len: int | None = None

    @property
    def is_adapter(self) -> bool:
        return self.parent is not None


@dataclass(frozen=True)
class ServedModels:
    """Every entry, in the server's order."""

    models: tuple[ServedModel, ...]

    @property
    def ids(self) -> frozenset[str]:
        """Every name a request may use here: base models and adapters."""
        return frozenset(m.id for m in self.models)

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models if not m.is_adapter)

    @property
    def adapters(self) -> Mapping[str, str]:
        """Adapter name -> its base model."""
        return {m.id: m.parent for m in self.models if m.parent is not None}


def parse_served_models(document: Any) -> ServedModels:
    """The entries of a decoded ``/v1/models`` answer (``{"object": "list", "data": [...]}``).

    Raises ``ValueError`` naming what is wrong if the document is not that shape: not an
    object, no ``data`` list, an entry that is not an object or has no string ``id``.
    Unknown fields are ignored; a ``parent``, ``root`` or ``max_model_len`` of the wrong
    type reads as absent.
    """
    if not isinstance(document, Mapping):
        raise ValueError(f"/v1/models: expected a JSON object, got {type(document).__name__}")
    data = document.get("data")
    if not isinstance(data, list):
        raise ValueError("/v1/models: expected a 'data' list")
    models = []
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            raise ValueError(f"/v1/models: data[{i}] has no string 'id'")
        models.append(
            ServedModel(
                id=entry["id"],
                parent=_str(entry.get("parent")),
                root=_str(entry.get("root")),
                max_model_len=_int(entry.get("max_model_len")),
            )
        )
    return ServedModels(tuple(models))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
