"""Storage for the test API server: objects, one resourceVersion counter, an event history.

Like etcd behind kube-apiserver, every write (create, update, delete) bumps a single global
revision, stamps it into the object's ``metadata.resourceVersion`` and appends exactly one
event to the history. A write that changes nothing is not a write: no new revision, no
event (kube-apiserver skips no-op updates the same way).

The history runs from ``floor`` (exclusive) to ``rv`` (inclusive); a watch may resume from
any version ``>= floor``. :meth:`Store.compact` (or ``history_limit``) raises the floor, so
older versions get ``410 Expired``, as after etcd compaction.

Pure and synchronous: no asyncio, no HTTP. Subscribers are called synchronously, in
revision order, right after each write. Objects handed in are copied; objects handed out
are copies, so callers may change them freely.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kubeapi.resources import ResourceType, now_rfc3339
from tests.kubeapi.status import already_exists, expired, not_found, too_large

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace, name)


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One write. ``obj`` is the state after it (for DELETED: the last state, carrying the
    deletion's resourceVersion); ``prev`` the state before (None for ADDED). Both are
    shared between subscribers and must not be mutated."""

    rv: int
    plural: str
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    prev: Obj | None


def _key(plural: str, obj: Obj) -> Key:
    meta = obj["metadata"]
    return (plural, meta.get("namespace", ""), meta["name"])


def _without_rv(obj: Obj) -> Obj:
    stripped = dict(obj)
    stripped["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return stripped


class Store:
    """All objects of all served types. Not thread-safe: use from one event loop."""

    def __init__(self, initial_rv: int = 1, history_limit: int | None = None) -> None:
        self._rv = initial_rv
        self._floor = initial_rv
        self._objects: dict[Key, Obj] = {}
        self._history: list[StoreEvent] = []
        self._history_limit = history_limit
        self._subscribers: list[Callable[[StoreEvent], None]] = []

    @property
    def rv(self) -> int:
        """The newest revision (what a LIST reports as ``metadata.resourceVersion``)."""
        return self._rv

    @property
    def floor(self) -> int:
        """The oldest revision a watch may start after; older ones are expired."""
        return self._floor

    def subscribe(self, callback: Callable[[StoreEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after every write; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def find(self, plural: str, namespace: str, name: str) -> Obj | None:
        obj = self._objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """A copy of the object; raises 404 ``ApiError`` if absent."""
        obj = self.find(rt.plural, namespace, name)
        if obj is None:
            raise not_found(rt.group, rt.plural, name)
        return obj

    def objects(self, plural: str, namespace: str | None) -> list[Obj]:
        """Current objects in key order (namespace, name); ``namespace=None`` is all."""
        return [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self._objects.items())
            if p == plural and (namespace is None or ns == namespace)
        ]

    def objects_at(self, plural: str, namespace: str | None, rv: int) -> list[Obj]:
        """The objects as they were at revision ``rv`` (an ``Exact`` LIST), rebuilt by
        undoing newer events; 410 before the floor, 504 beyond the newest revision."""
        if rv > self._rv:
            raise too_large(rv, self._rv)
        if rv < self._floor:
            raise expired(rv, self._floor)
        state = {k: v for k, v in self._objects.items() if k[0] == plural}
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.plural != plural:
                continue
            key = _key(plural, event.obj)
            if event.prev is None:
                state.pop(key, None)
            else:
                state[key] = event.prev
        return [
            copy.deepcopy(obj)
            for (_, ns, _), obj in sorted(state.items())
            if namespace is None or ns == namespace
        ]

    def events_since(self, rv: int) -> list[StoreEvent]:
        """Events newer than ``rv``; 410 ``ApiError`` if some were compacted away."""
        if rv < self._floor:
            raise expired(rv, self._floor)
        if rv > self._rv:
            raise too_large(rv, self._rv)
        return [e for e in self._history if e.rv > rv]

    def compact(self) -> None:
        """Forget all history: only watches from the current revision can resume."""
        self._history.clear()
        self._floor = self._rv

    def create(self, rt: ResourceType, obj: Obj) -> Obj:
        """Store a new object, filling uid, creationTimestamp, generation and
        resourceVersion; 409 AlreadyExists if the name is taken. Returns a copy."""
        new = copy.deepcopy(obj)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta = new.setdefault("metadata", {})
        key = _key(rt.plural, new)
        if key in self._objects:
            raise already_exists(rt.group, rt.plural, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("deletionTimestamp", None)
        if rt.has_generation:
            meta["generation"] = 1
        return self._write(rt, key, "ADDED", new, None)

    def update(self, rt: ResourceType, obj: Obj) -> Obj:
        """Replace an existing object with ``obj`` (identity fields are kept from the
        stored one; generation moves when ``spec`` does). A no-op update returns the
        stored object unchanged. 404 if absent. Returns a copy."""
        new = copy.deepcopy(obj)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        key = _key(rt.plural, new)
        old = self._objects.get(key)
        if old is None:
            raise not_found(rt.group, rt.plural, key[2])
        meta, old_meta = new["metadata"], old["metadata"]
        for field in ("uid", "creationTimestamp", "name", "namespace"):
            meta[field] = old_meta[field]
        if rt.has_generation:
            generation = int(old_meta.get("generation", 1))
            meta["generation"] = generation + (new.get("spec") != old.get("spec"))
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if _without_rv(new) == _without_rv(old):
            return copy.deepcopy(old)
        return self._write(rt, key, "MODIFIED", new, old)

    def remove(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """Delete an object for good (a DELETED event); 404 if absent. Returns its last
        state, carrying the deletion's resourceVersion."""
        key = (rt.plural, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise not_found(rt.group, rt.plural, name)
        return self._write(rt, key, "DELETED", copy.deepcopy(old), old)

    def _write(self, rt: ResourceType, key: Key, kind: str, new: Obj, old: Obj | None) -> Obj:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            del self._objects[key]
        else:
            self._objects[key] = new
        event = StoreEvent(self._rv, rt.plural, key[1], kind, new, old)
        self._history.append(event)
        if self._history_limit is not None and len(self._history) > self._history_limit:
            self._floor = self._history.pop(0).rv
        for callback in list(self._subscribers):
            callback(event)
        return copy.deepcopy(new)
