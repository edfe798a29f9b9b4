"""The three PATCH flavours kube-apiserver accepts for built-in types.

* ``application/merge-patch+json`` — RFC 7386: objects merge recursively, ``null`` deletes a
  key, anything else (lists included) replaces.
* ``application/strategic-merge-patch+json`` — as above, except lists whose elements carry a
  known merge key (containers by ``name``, conditions by ``type``, ports by ``containerPort``,
  ...) merge element-wise, ``{"$patch": "delete"}`` removes an element, ``{"$patch":
  "replace"}`` on a map replaces it. The merge keys come from a small fixed table rather
  than the OpenAPI ``x-kubernetes-patch-merge-key`` extensions — enough for pods, workloads
  and leases.
* ``application/json-patch+json`` — RFC 6902 ``add``/``remove``/``replace``/``test``/
  ``move``/``copy`` over JSON pointers.

Functions never mutate their arguments; they return a new document or raise ``ApiError``.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kubeapi.status import ApiError

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "conditions": "type",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ownerReferences": "uid",
    "podIPs": "ip",
    "hostIPs": "ip",
}
_MERGED_SCALAR_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch over maps and merge-keyed lists (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return {}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    if field in _MERGED_SCALAR_LISTS:
        merged = list(current)
        merged.extend(v for v in patch if v not in merged)
        return merged
    key = _MERGE_KEYS.get(field)
    if key is None:
        return copy.deepcopy(patch)
    merged = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(422, f"map: {item!r} does not contain declared merge key: {key}")
        index = next((i for i, x in enumerate(merged) if x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, f"path not found: {path}") from exc
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    node, last = _parent(doc, parts, path)
    try:
        return node[int(last)] if isinstance(node, list) else node[last]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"path not found: {path}") from exc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    node, last = _parent(doc, parts, path)
    try:
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)
    except (KeyError, IndexError, ValueError) as exc:
        raise ApiError(
            422, f"remove operation does not apply: doc is missing path: {path}"
        ) from exc


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    node, last = _parent(doc, parts, path)
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if not 0 <= index <= len(node):
            raise ApiError(422, f"add operation does not apply: index out of range: {path}")
        node.insert(index, value)
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ApiError(422, f"add operation does not apply: doc is missing path: {path}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(422, f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_get(doc, op.get("from", "")))
            if kind == "move":
                _remove(doc, op.get("from", ""))
            doc = _add(doc, path, value)
        else:
            raise ApiError(422, f"Unexpected kind: {kind}")
    return doc


def apply_patch(content_type: str, target: dict[str, Any], body: Any) -> dict[str, Any]:
    """Apply ``body`` as ``content_type`` to ``target``; 415 for unsupported media types."""
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH:
        result = json_patch(target, body)
    elif media in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object")
        merge = strategic_merge_patch if media == STRATEGIC_MERGE_PATCH else merge_patch
        result = merge(target, body)
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}",
        )
    if not isinstance(result, dict):
        raise ApiError(400, "the patched document is not an object")
    return result
