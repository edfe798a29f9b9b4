"""Watch streams: newline-delimited JSON events over a chunked HTTP/1.1 response.

Semantics follow kube-apiserver's watch cache (``storage/cacher``):

* ``resourceVersion`` absent or ``"0"``: synthetic ADDED events for the current objects,
  then live events. ``sendInitialEvents=true`` additionally ends the initial ADDEDs with a
  BOOKMARK annotated ``k8s.io/initial-events-end: "true"``; ``sendInitialEvents=false``
  starts from now without them.
* ``resourceVersion=N``: every event after N from the history, then live events. If N is
  older than the retained history, the stream is a single ERROR event carrying a 410
  ``Expired`` Status ("too old resource version: N (floor)") and ends; a version the server
  has not reached yet gives an ERROR with 504 ``Timeout`` (the real server first waits up to
  3 s for it).
* Label and field selectors filter per watcher, across transitions: an object that starts
  matching arrives as ADDED, one that stops matching as DELETED (its previous state with the
  new resourceVersion).
* ``allowWatchBookmarks=true``: BOOKMARK events (``kind``, ``apiVersion`` and
  ``metadata.resourceVersion`` only) every ``bookmark_interval`` seconds while idle, and on
  demand. A bookmark's version is never ahead of an event not yet sent.
* ``timeoutSeconds``: the stream ends cleanly (terminating chunk) when it elapses.

:class:`WatchHub` also lets tests end every stream, cleanly or abruptly (connection aborted
mid-stream, no terminating chunk), and counts open streams per resource.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kubeapi.resources import ResourceType
from tests.kubeapi.selectors import FieldSelector, LabelSelector
from tests.kubeapi.status import ApiError, too_large
from tests.kubeapi.store import Store, StoreEvent

Obj = dict[str, Any]
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """A parsed watch: what to watch, from where, and how."""

    rt: ResourceType
    namespace: str | None  # None: all namespaces
    labels: LabelSelector
    fields: FieldSelector
    resource_version: int | None  # None: absent or "0"
    bookmarks: bool
    send_initial_events: bool | None
    timeout: float


@dataclass(frozen=True, slots=True)
class _Bookmark:
    rv: int
    initial_events_end: bool = False


@dataclass(frozen=True, slots=True)
class _End:
    abrupt: bool


_Item = Obj | _Bookmark | _End


class Watcher:
    """One open watch stream: its filter and the queue of events waiting to be sent."""

    def __init__(self, request: WatchRequest) -> None:
        self.request = request
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.aborted = False

    def matches(self, obj: Obj) -> bool:
        return self.request.labels.matches(obj["metadata"].get("labels")) and (
            self.request.fields.matches(obj)
        )

    def convert(self, event: StoreEvent) -> Obj | None:
        """The event this watcher sees for a store event, or None (like ``cacheWatcher``)."""
        req = self.request
        if event.plural != req.rt.plural:
            return None
        if req.namespace is not None and event.namespace != req.namespace:
            return None
        cur = event.type != "DELETED" and self.matches(event.obj)
        old = event.prev is not None and self.matches(event.prev)
        if cur:
            return {"type": "MODIFIED" if old else "ADDED", "object": event.obj}
        if old and event.prev is not None:
            gone = copy.deepcopy(event.prev)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return {"type": "DELETED", "object": gone}
        return None

    def offer(self, event: StoreEvent) -> None:
        """Store subscriber: queue the converted event, if any."""
        converted = self.convert(event)
        if converted is not None:
            self.queue.put_nowait(converted)


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _bookmark(rt: ResourceType, item: _Bookmark) -> Obj:
    meta: Obj = {"resourceVersion": str(item.rv)}
    if item.initial_events_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {
        "type": "BOOKMARK",
        "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
    }


class WatchHub:
    """Serves watch requests against a :class:`Store` and tracks the open streams."""

    def __init__(self, store: Store, bookmark_interval: float | None) -> None:
        self._store = store
        self.bookmark_interval = bookmark_interval
        self._watchers: set[Watcher] = set()

    def count(self, plural: str | None = None) -> int:
        """Open watch streams, optionally only those of one resource (e.g. ``"pods"``)."""
        return sum(1 for w in self._watchers if plural in (None, w.request.rt.plural))

    def close_all(self, abrupt: bool) -> int:
        """End every open stream: cleanly (pending events, then the terminating chunk) or
        abruptly (connection aborted at once). Returns how many were open."""
        for watcher in self._watchers:
            watcher.aborted = watcher.aborted or abrupt
            watcher.queue.put_nowait(_End(abrupt))
        return len(self._watchers)

    def bookmark_all(self) -> None:
        """Queue a BOOKMARK at the current version on every stream that allows them."""
        for watcher in self._watchers:
            if watcher.request.bookmarks:
                watcher.queue.put_nowait(_Bookmark(self._store.rv))

    def _initial(self, watcher: Watcher) -> list[_Item]:
        """Events to send before live ones. Runs synchronously with subscribing, so no
        write can fall between the two."""
        req = watcher.request
        if req.resource_version is not None and not req.send_initial_events:
            events = self._store.events_since(req.resource_version)
            return [e for e in map(watcher.convert, events) if e is not None]
        if req.resource_version is not None and req.resource_version > self._store.rv:
            raise too_large(req.resource_version, self._store.rv)
        if req.send_initial_events is False:
            return []
        initial: list[_Item] = [
            {"type": "ADDED", "object": obj}
            for obj in self._store.objects(req.rt.plural, req.namespace)
            if watcher.matches(obj)
        ]
        if req.send_initial_events:
            initial.append(_Bookmark(self._store.rv, initial_events_end=True))
        return initial

    async def serve(self, request: web.Request, watch: WatchRequest) -> web.StreamResponse:
        """Stream events until the timeout, a test-initiated end, or the client leaving."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        watcher = Watcher(watch)
        try:
            initial = self._initial(watcher)
        except ApiError as err:
            await resp.write(_line({"type": "ERROR", "object": err.body()}))
            await resp.write_eof()
            return resp
        unsubscribe = self._store.subscribe(watcher.offer)
        self._watchers.add(watcher)
        for item in initial:
            watcher.queue.put_nowait(item)
        try:
            return await self._pump(request, resp, watcher)
        finally:
            self._watchers.discard(watcher)
            unsubscribe()

    async def _pump(
        self, request: web.Request, resp: web.StreamResponse, watcher: Watcher
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        rt = watcher.request.rt
        deadline = loop.time() + watcher.request.timeout
        interval = self.bookmark_interval if watcher.request.bookmarks else None
        next_bookmark = loop.time() + interval if interval else math.inf
        while True:
            now = loop.time()
            if now >= deadline:
                await resp.write_eof()
                return resp
            try:
                async with asyncio.timeout(min(deadline, next_bookmark) - now):
                    item = await watcher.queue.get()
            except TimeoutError:
                # Idle: every event up to the store's version was sent or filtered out.
                if interval and loop.time() >= next_bookmark and watcher.queue.empty():
                    await resp.write(_line(_bookmark(rt, _Bookmark(self._store.rv))))
                    next_bookmark = loop.time() + interval
                continue
            if watcher.aborted:
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if isinstance(item, _End):
                await resp.write_eof()
                return resp
            event = _bookmark(rt, item) if isinstance(item, _Bookmark) else item
            await resp.write(_line(event))
