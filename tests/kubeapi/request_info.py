"""Parsing requests the way kube-apiserver's request-info resolver and ListOptions do.

:func:`parse_target` maps a URL path to a resource (type, namespace, name, subresource);
:func:`verb_of` names the Kubernetes verb; :func:`parse_list_options` validates the LIST and
WATCH query parameters. Pure functions; errors are ``ApiError`` (400 or 422).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.kubeapi.resources import RESOURCE_TYPES, ResourceType
from tests.kubeapi.selectors import FieldSelector, LabelSelector, parse_fields, parse_labels
from tests.kubeapi.status import ApiError, bad_request


@dataclass(frozen=True, slots=True)
class Target:
    rt: ResourceType
    namespace: str | None  # None: a list or watch across all namespaces
    name: str | None  # None: the collection
    subresource: str | None  # only "scale"

    @property
    def resource(self) -> str:
        """``plural`` or ``plural/subresource``: how counters and fault rules name it."""
        return f"{self.rt.plural}/{self.subresource}" if self.subresource else self.rt.plural


def parse_target(path: str) -> Target | None:
    """The resource a path addresses, or None if this server does not serve it."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        return None
    rt = RESOURCE_TYPES.get((group, version, rest[0]))
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if rt is None or (name is not None and namespace is None):
        return None
    if sub is not None and (sub != "scale" or not rt.scalable):
        return None
    return Target(rt, namespace, name, sub)


def _flag(query: Mapping[str, str], key: str) -> bool | None:
    value = query.get(key)
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise bad_request(f'invalid value for {key}: "{value}"')


def verb_of(method: str, target: Target, query: Mapping[str, str]) -> str:
    """Kubernetes verb: list/watch/get/create/update/patch/delete (else the method)."""
    if method == "GET":
        if target.name is None:
            return "watch" if _flag(query, "watch") else "list"
        return "get"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    verb = verbs.get(method, method.lower())
    if target.name is None and verb == "delete":
        return "deletecollection"
    return verb


@dataclass(frozen=True, slots=True)
class ListOptions:
    labels: LabelSelector
    fields: FieldSelector
    resource_version: int | None  # None: absent or "0"
    rv_match: str  # "", "NotOlderThan" or "Exact"
    watch: bool
    bookmarks: bool
    send_initial_events: bool | None
    timeout_seconds: int | None


def _invalid_options(message: str) -> ApiError:
    return ApiError(422, f"ListOptions.meta.k8s.io is invalid: {message}")


def parse_list_options(query: Mapping[str, str], rt: ResourceType) -> ListOptions:
    """Validate the query of a LIST or WATCH (selectors, versions, timeout)."""
    try:
        labels = parse_labels(query.get("labelSelector"))
        fields = parse_fields(query.get("fieldSelector"), rt.fields)
    except ValueError as exc:
        raise bad_request(f"unable to parse selector: {exc}") from exc
    raw_rv = query.get("resourceVersion", "")
    rv_match = query.get("resourceVersionMatch", "")
    try:
        rv = int(raw_rv) if raw_rv not in ("", "0") else None
    except ValueError as exc:
        raise bad_request(f'invalid resource version: "{raw_rv}"') from exc
    if rv is not None and rv < 0:
        raise bad_request(f'invalid resource version: "{raw_rv}"')
    if rv_match not in ("", "NotOlderThan", "Exact"):
        raise _invalid_options(f'resourceVersionMatch: Unsupported value: "{rv_match}"')
    if rv_match and not raw_rv and not query.get("sendInitialEvents"):
        raise _invalid_options(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
            "resourceVersion is provided"
        )
    if rv_match == "Exact" and raw_rv == "0":
        raise _invalid_options(
            'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for '
            'resourceVersion "0"'
        )
    watch = bool(_flag(query, "watch"))
    send_initial = _flag(query, "sendInitialEvents") if watch else None
    bookmarks = bool(_flag(query, "allowWatchBookmarks")) if watch else False
    if watch and rv_match and send_initial is None:
        raise _invalid_options(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
            "unless sendInitialEvents is provided"
        )
    if send_initial is not None and rv_match != "NotOlderThan":
        raise _invalid_options(
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
            "resourceVersionMatch to NotOlderThan"
        )
    if send_initial and not bookmarks:
        raise _invalid_options(
            "allowWatchBookmarks: Required value: sendInitialEvents requires setting "
            "allowWatchBookmarks to true"
        )
    timeout = query.get("timeoutSeconds")
    try:
        timeout_seconds = int(timeout) if timeout else None
    except ValueError as exc:
        raise bad_request(f'invalid value for timeoutSeconds: "{timeout}"') from exc
    return ListOptions(
        labels, fields, rv, rv_match, watch, bookmarks, send_initial, timeout_seconds
    )


def parse_body(raw: bytes, rt: ResourceType) -> Any:
    """A JSON request body; 400 like the real decoder if it is not JSON."""
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise bad_request(
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {exc}'
        ) from exc
