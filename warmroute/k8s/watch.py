"""List + watch one kind of object, the way client-go's reflector does it.

* LIST once, remember its resourceVersion, then WATCH from it with bookmarks, so a
  reconnect resumes where it left off — no relist per event or per reconnect;
* a watch that ends (server timeout, closed connection) resumes from the last version;
* 410 Gone (history compacted) is the only reason to LIST again;
* API errors back off exponentially (capped) and are reported, keeping the last known
  state: nothing is removed just because the API server is unreachable.
The official client is synchronous, so the loop runs in a thread and hands results to the
event loop with ``call_soon_threadsafe``.

``ListWatcher`` works with any list function of the client (``CoreV1Api.list_namespaced_pod``,
``CustomObjectsApi.list_namespaced_custom_object``, ...); ``PodWatcher`` is the pod one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

logger = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass
class WatchStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    errors: int = 0
    connected: bool = False
    last_error: str = ""
    resource_version: str = ""


class ListWatcher:
    """Keeps ``on_sync(items)`` (after each LIST) and ``on_event(type, obj)`` flowing.

    ``list_func(*args, label_selector=..., field_selector=..., ...)`` is a list call of the
    official client; ``what`` names the objects in logs. Callbacks run on ``loop``; objects
    are the raw JSON dicts. ``stop()`` ends the thread within ``watch_timeout``.
    """

    def __init__(
        self,
        list_func: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        what: str,
        label_selector: str = "",
        field_selector: str = "",
        loop: asyncio.AbstractEventLoop,
        on_sync: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        on_status: Callable[[WatchStats], None] | None = None,
        watch_timeout: int = 60,
        max_backoff: float = 10.0,
    ) -> None:
        self._list_func = list_func
        self._args = args
        self._what = what
        self._filters: dict[str, str] = {}
        if label_selector:
            self._filters["label_selector"] = label_selector
        if field_selector:
            self._filters["field_selector"] = field_selector
        self._loop = loop
        self._on_sync = on_sync
        self._on_event = on_event
        self._on_status = on_status
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch {what}", daemon=True)
        self.stats = WatchStats()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        rv = ""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._list()
                rv = self._watch_from(rv)
                backoff = 0.1
            except ApiException as exc:
                if exc.status == 410:
                    logger.info("%s: resourceVersion %s expired; relisting", self._what, rv)
                    rv = ""
                    continue
                backoff = self._failed(f"API error {exc.status}: {exc.reason}", backoff)
            except Exception as exc:  # connection refused, reset, timeouts: keep state, retry
                backoff = self._failed(f"{type(exc).__name__}: {exc}", backoff)

    def _failed(self, error: str, backoff: float) -> float:
        self.stats.errors += 1
        self.stats.connected = False
        self.stats.last_error = error
        logger.warning(
            "%s: %s; keeping last known state, retrying in %.1fs", self._what, error, backoff
        )
        self._report()
        self._stop.wait(backoff)
        return min(self._max_backoff, backoff * 2)

    def _list(self) -> str:
        resp = self._list_func(
            *self._args, **self._filters, _preload_content=False, _request_timeout=30
        )
        doc = json.loads(resp.data)
        self.stats.lists += 1
        self.stats.connected = True
        rv = str(doc["metadata"]["resourceVersion"])
        self.stats.resource_version = rv
        self._loop.call_soon_threadsafe(self._on_sync, list(doc.get("items") or []))
        self._report()
        return rv

    def _watch_from(self, rv: str) -> str:
        self._watch = w = k8s_watch.Watch()
        self.stats.watches += 1
        for event in w.stream(
            self._list_func,
            *self._args,
            **self._filters,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=self._watch_timeout + 10,
        ):
            if self._stop.is_set():
                break
            kind = event["type"]
            raw = event["raw_object"]
            if kind == "ERROR":
                code = raw.get("code")
                raise ApiException(status=code, reason=raw.get("reason") or raw.get("message"))
            rv = str(raw["metadata"]["resourceVersion"])
            self.stats.resource_version = rv
            self.stats.connected = True
            if kind == "BOOKMARK":
                continue
            self.stats.events += 1
            self._loop.call_soon_threadsafe(self._on_event, kind, raw)
        return rv

    def _report(self) -> None:
        if self._on_status is not None:
            self._loop.call_soon_threadsafe(self._on_status, self.stats)


class PodWatcher(ListWatcher):
    """A ``ListWatcher`` over the pods of ``namespace`` matching ``selector`` (matchLabels)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        selector: dict[str, str],
        *,
        loop: asyncio.AbstractEventLoop,
        on_sync: Callable[[list[Obj]], None],
        on_event: Callable[[str, Obj], None],
        on_status: Callable[[WatchStats], None] | None = None,
        watch_timeout: int = 60,
        max_backoff: float = 10.0,
    ) -> None:
        labels = label_selector(selector)
        super().__init__(
            k8s.CoreV1Api(api).list_namespaced_pod, (namespace,),
            what=f"pods {namespace}/{labels}", label_selector=labels, loop=loop,
            on_sync=on_sync, on_event=on_event, on_status=on_status,
            watch_timeout=watch_timeout, max_backoff=max_backoff,
        )  # fmt: skip


def label_selector(match_labels: dict[str, str]) -> str:
    """``matchLabels`` as a ``labelSelector`` query string (``a=1,b=2``, sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
