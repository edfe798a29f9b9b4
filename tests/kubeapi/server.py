"""A Kubernetes API server for tests: the real REST and watch protocol, in-process.

No kube-apiserver binary can run here, so warmroute's Kubernetes adapters are tested with
the official ``kubernetes`` client against this aiohttp application, which serves pods
(list/watch/get/patch/delete), deployments and statefulsets (get and the ``scale``
subresource), leases (get/create/replace/patch) and Gateway API Inference Extension
``InferencePool`` custom objects (every verb) with kube-apiserver's semantics: one
global resourceVersion, watch history with 410 ``Expired`` after compaction, bookmarks,
selectors, optimistic concurrency and ``Status`` errors. See :mod:`tests.kubeapi.api` and
:mod:`tests.kubeapi.watch` for the protocol details.

:class:`KubeApiServer` is also the control panel: tests create and change objects as the
kubelet and controllers would, inject faults, compact history, end watch streams, and
read what the clients did (request counts, scale changes with timestamps).

Runs in the test's event loop; the control methods are synchronous unless they start or
stop listening, and must be called from that loop. The official client is synchronous:
call it through ``asyncio.to_thread`` so the server keeps serving.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kubeapi.api import KubeApi, mark_deleting
from tests.kubeapi.faults import Faults
from tests.kubeapi.resources import (
    BY_KIND,
    DEPLOYMENTS,
    INFERENCE_POOLS,
    LEASES,
    PODS,
    STATEFULSETS,
    ResourceType,
    admit,
    make_inference_pool,
    make_pod,
    make_workload,
    set_condition,
)
from tests.kubeapi.store import Store, StoreEvent
from tests.kubeapi.watch import WatchHub

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
ScaleHook = Callable[[str, str, str, int], object]


@dataclass(frozen=True, slots=True)
class ScaleRecord:
    """One change of a workload's ``spec.replicas``; ``at`` is ``time.monotonic()``."""

    kind: str  # "Deployment" | "StatefulSet"
    namespace: str
    name: str
    replicas: int
    previous: int
    at: float
    resource_version: str


class KubeApiServer:
    """The test API server and its control API (see the module docstring).

    ``bookmark_interval``: seconds between BOOKMARKs on idle watches that allow them (None:
    only on demand). ``default_watch_timeout``: stream length when the client sends no
    ``timeoutSeconds``. ``history_limit``: events retained before the oldest are compacted
    (None: until :meth:`compact`). ``simulate_controller``: workload ``status.replicas``
    follows ``spec.replicas`` at once (else only :meth:`set_workload_status` moves it).
    ``on_scale(kind, namespace, name, replicas)`` is called on every replica change.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float | None = 60.0,
        default_watch_timeout: float = 1800.0,
        history_limit: int | None = None,
        simulate_controller: bool = True,
        on_scale: ScaleHook | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(history_limit=history_limit)
        self.faults = Faults()
        self.hub = WatchHub(self.store, bookmark_interval)
        self.api = KubeApi(
            self.store,
            self.hub,
            self.faults,
            default_watch_timeout=default_watch_timeout,
            simulate_controller=simulate_controller,
        )
        self.on_scale = on_scale
        self.scale_history: list[ScaleRecord] = []
        self.hook_errors: list[BaseException] = []
        self.store.subscribe(self._record_scale)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on ``host:port`` (port 0: any free one); returns the bound port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.api.handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None
        )
        await self._runner.setup()
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        assert self._runner is not None, "start() first"
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        self.port = self._site.port

    async def stop(self) -> None:
        """End every watch cleanly, close all connections, stop listening."""
        self.hub.close_all(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ------------------------------------------------------------------------

    def inject_errors(
        self,
        count: int,
        status: int = 500,
        *,
        resource: str | None = None,
        verb: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Fail the next ``count`` resource requests (optionally only of ``resource``, e.g.
        ``"pods"`` or ``"deployments/scale"``, and/or ``verb``, e.g. ``"list"``) with a
        ``status`` Status; ``retry_after`` adds a ``Retry-After`` header."""
        self.faults.add_count(count, status, resource=resource, verb=verb, retry_after=retry_after)

    def fail_for(
        self,
        seconds: float,
        status: int = 503,
        *,
        resource: str | None = None,
        verb: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Fail every matching resource request for the next ``seconds``."""
        self.faults.add_window(
            seconds, status, resource=resource, verb=verb, retry_after=retry_after
        )

    def hang(self, *, resource: str | None = None, verb: str | None = None) -> None:
        """Leave every matching resource request unanswered until :meth:`release_hangs`."""
        self.faults.add_hang(resource=resource, verb=verb)

    def release_hangs(self) -> None:
        self.faults.release_hangs()

    def clear_faults(self) -> None:
        self.faults.clear()

    async def set_unreachable(self) -> None:
        """Stop listening and drop every connection (watches abort mid-stream): clients see
        connection refused/reset until :meth:`set_reachable`."""
        self.hub.close_all(abrupt=True)
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()

    async def set_reachable(self) -> None:
        """Listen again on the same port."""
        if self._site is None:
            await self._listen()

    def close_watches(self, abrupt: bool = True) -> int:
        """End every open watch stream: ``abrupt`` aborts the connection mid-stream (the
        client's read fails), else the stream ends cleanly as on a server-side timeout.
        Returns how many were open."""
        return self.hub.close_all(abrupt)

    def compact(self) -> None:
        """Forget the event history: a watch from any older version now gets 410 Expired."""
        self.store.compact()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current version on every watch that allows bookmarks."""
        self.hub.bookmark_all()

    # -- observation -------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def request_count(self, resource: str, verb: str) -> int:
        """Requests received (served or failed) for ``resource`` (``pods``,
        ``deployments/scale``, ...) and ``verb`` (``list``, ``watch``, ``get``, ...)."""
        return self.api.counts[(resource, verb)]

    def list_count(self, resource: str = "pods") -> int:
        return self.request_count(resource, "list")

    def watch_count(self, resource: str = "pods") -> int:
        return self.request_count(resource, "watch")

    def active_watches(self, resource: str | None = None) -> int:
        """Watch streams open now (all resources, or one plural)."""
        return self.hub.count(resource)

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """A copy of the resource request counts, keyed ``(resource, verb)``."""
        return Counter(self.api.counts)

    @property
    def running(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` has not."""
        return self._runner is not None

    # -- pods --------------------------------------------------------------------------

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        ip: str | None,
        ready: bool,
        phase: str = "Running",
        annotations: Mapping[str, str] | None = None,
        container_port: int = 8000,
        node_name: str = "node-1",
    ) -> Obj:
        """Create a scheduled pod (ADDED); returns it as stored."""
        pod = make_pod(
            namespace, name, labels, ip, ready, phase, annotations, container_port, node_name
        )
        return self.store.create(PODS, pod)

    def update_pod(self, namespace: str, name: str, mutate: Callable[[Obj], None]) -> Obj:
        """Apply ``mutate`` to a copy of the pod and store it (MODIFIED unless a no-op)."""
        pod = self.store.get(PODS, namespace, name)
        mutate(pod)
        return self.store.update(PODS, pod)

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> Obj:
        """Set the Ready and ContainersReady conditions (and container readiness)."""

        def mutate(pod: Obj) -> None:
            set_condition(pod, "Ready", ready)
            set_condition(pod, "ContainersReady", ready)
            for status in pod["status"].get("containerStatuses") or ():
                status["ready"] = ready

        return self.update_pod(namespace, name, mutate)

    def set_pod_ip(self, namespace: str, name: str, ip: str | None) -> Obj:
        def mutate(pod: Obj) -> None:
            pod["status"].pop("podIP", None)
            pod["status"].pop("podIPs", None)
            if ip:
                pod["status"].update(podIP=ip, podIPs=[{"ip": ip}])

        return self.update_pod(namespace, name, mutate)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> Obj:
        return self.update_pod(namespace, name, lambda pod: pod["status"].update(phase=phase))

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> Obj:
        """Replace the pod's labels (watchers whose selector stops matching see DELETED)."""
        return self.update_pod(
            namespace, name, lambda pod: pod["metadata"].update(labels=dict(labels))
        )

    def delete_pod(self, namespace: str, name: str, grace_seconds: int = 30) -> Obj:
        """Begin graceful deletion (``deletionTimestamp``; MODIFIED), as ``kubectl delete``
        does; the pod stays until :meth:`finalize_pod_deletion`."""
        pod = self.store.get(PODS, namespace, name)
        if "deletionTimestamp" in pod["metadata"]:
            return pod
        return self.store.update(PODS, mark_deleting(pod, grace_seconds))

    def finalize_pod_deletion(self, namespace: str, name: str) -> Obj:
        """Remove the pod for good (DELETED), as the kubelet does after termination."""
        return self.store.remove(PODS, namespace, name)

    def pod(self, namespace: str, name: str) -> Obj | None:
        return self.store.find("pods", namespace, name)

    def pods(self, namespace: str | None = None) -> list[Obj]:
        return self.store.objects("pods", namespace)

    # -- workloads ---------------------------------------------------------------------

    def _workload_type(self, kind: str) -> ResourceType:
        rt = BY_KIND.get(kind)
        if rt is None or not rt.scalable:
            raise ValueError(f"not a scalable kind: {kind!r}")
        return rt

    def add_deployment(
        self,
        namespace: str,
        name: str,
        replicas: int,
        selector: Mapping[str, str] | None = None,
        container_port: int = 8000,
    ) -> Obj:
        """Create a Deployment (selector defaults to ``{"app": name}``)."""
        obj = make_workload(DEPLOYMENTS, namespace, name, replicas, selector, container_port)
        return self.store.create(DEPLOYMENTS, obj)

    def add_statefulset(
        self,
        namespace: str,
        name: str,
        replicas: int,
        selector: Mapping[str, str] | None = None,
        container_port: int = 8000,
    ) -> Obj:
        obj = make_workload(STATEFULSETS, namespace, name, replicas, selector, container_port)
        return self.store.create(STATEFULSETS, obj)

    def workload(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.store.find(self._workload_type(kind).plural, namespace, name)

    def replicas(self, kind: str, namespace: str, name: str) -> int:
        """The workload's ``spec.replicas``."""
        rt = self._workload_type(kind)
        return int(self.store.get(rt, namespace, name)["spec"].get("replicas", 1))

    def set_workload_status(
        self, kind: str, namespace: str, name: str, replicas: int, ready_replicas: int | None = None
    ) -> Obj:
        """Move ``status.replicas``/``readyReplicas`` as the workload controller would."""
        rt = self._workload_type(kind)
        obj = self.store.get(rt, namespace, name)
        ready = replicas if ready_replicas is None else ready_replicas
        obj["status"].update(replicas=replicas, readyReplicas=ready)
        return self.store.update(rt, obj)

    def _record_scale(self, event: StoreEvent) -> None:
        rt = BY_KIND.get(event.obj.get("kind", ""))
        if event.type != "MODIFIED" or rt is None or not rt.scalable or event.prev is None:
            return
        replicas = int(event.obj["spec"].get("replicas", 1))
        previous = int(event.prev["spec"].get("replicas", 1))
        if replicas == previous:
            return
        meta = event.obj["metadata"]
        record = ScaleRecord(
            rt.kind, meta["namespace"], meta["name"], replicas, previous, time.monotonic(),
            meta["resourceVersion"],
        )  # fmt: skip
        self.scale_history.append(record)
        if self.on_scale is not None:
            try:
                self.on_scale(record.kind, record.namespace, record.name, replicas)
            except Exception as exc:  # a broken hook must not fail the client's request
                logger.exception("on_scale hook failed")
                self.hook_errors.append(exc)

    # -- leases ------------------------------------------------------------------------

    def lease(self, namespace: str, name: str) -> Obj | None:
        return self.store.find("leases", namespace, name)

    def put_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> Obj:
        """Create or overwrite a lease's spec (e.g. another holder), bypassing concurrency."""
        existing = self.store.find("leases", namespace, name)
        obj = existing or {"metadata": {"name": name, "namespace": namespace}}
        obj["spec"] = copy.deepcopy(dict(spec))
        admit(LEASES, obj)
        if existing is None:
            return self.store.create(LEASES, obj)
        return self.store.update(LEASES, obj)

    # -- inference pools ---------------------------------------------------------------

    def add_inference_pool(
        self,
        namespace: str,
        name: str,
        selector: Mapping[str, str],
        target_ports: list[int],
        *,
        picker: str | None = "warmroute-epp",
        picker_port: int = 9002,
        failure_mode: str | None = "FailClose",
    ) -> Obj:
        """Create an ``InferencePool`` (defaulted and validated like the v1 CRD)."""
        obj = make_inference_pool(
            namespace, name, selector, target_ports, picker, picker_port, failure_mode
        )
        admit(INFERENCE_POOLS, obj)
        return self.store.create(INFERENCE_POOLS, obj)

    def update_inference_pool(
        self, namespace: str, name: str, mutate: Callable[[Obj], None]
    ) -> Obj:
        """Apply ``mutate`` to a copy of the InferencePool and store it (MODIFIED)."""
        obj = self.store.get(INFERENCE_POOLS, namespace, name)
        mutate(obj)
        admit(INFERENCE_POOLS, obj)
        return self.store.update(INFERENCE_POOLS, obj)

    def delete_inference_pool(self, namespace: str, name: str) -> Obj:
        """Delete the InferencePool at once (DELETED), as ``kubectl delete`` does."""
        return self.store.remove(INFERENCE_POOLS, namespace, name)

    def inference_pool(self, namespace: str, name: str) -> Obj | None:
        return self.store.find(INFERENCE_POOLS.plural, namespace, name)
