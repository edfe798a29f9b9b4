"""The test Kubernetes API server, exercised by the REAL official client (kubernetes 37).

What the client does with the protocol, as observed here (and relied on by warmroute):

* A watch ERROR event carrying a 410 Status makes ``Watch.stream`` raise
  ``ApiException(status=410, reason="Expired: too old resource version: N (M)")``. With
  ``timeout_seconds`` set it raises at once; without, it first re-watches once from the same
  version (so the server sees two WATCH requests), then raises.
* A watch connection dropped mid-stream surfaces as ``urllib3.exceptions.ProtocolError``
  ("Response ended prematurely"); the caller must re-watch from ``Watch.resource_version``.
* A stream the server ends cleanly (its timeout) ends the generator silently when
  ``timeout_seconds`` was given (no automatic retry).
* A refused connection surfaces as ``urllib3.exceptions.MaxRetryError``, not ApiException.
* Lease times go out as ``datetime.isoformat()``; at microsecond 0 that has no fraction,
  which kube-apiserver's MicroTime parser rejects (400) — this server does too.

The client is synchronous: every call runs in ``asyncio.to_thread`` so the server, in this
event loop, keeps serving. Synchronisation is a polled condition with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.helpers import wait_for
from tests.kubeapi import KubeApiServer, api_client

NS = "inference"
LLM = {"app": "llm"}


class WatchRun:
    """``Watch().stream(...)`` running in a worker thread, collecting its events."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(asyncio.to_thread(self._run, func, args, kwargs))

    def _run(self, func: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> None:
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                self.events.append(event)
        except Exception as exc:  # reported to the test through .error
            self.error = exc

    def changes(self) -> list[tuple[str, str]]:
        """(type, pod name) of every non-bookmark event so far."""
        return [
            (e["type"], e["raw_object"]["metadata"]["name"])
            for e in list(self.events)
            if e["type"] != "BOOKMARK"
        ]

    def bookmarks(self) -> list[str]:
        return [
            e["raw_object"]["metadata"]["resourceVersion"]
            for e in list(self.events)
            if e["type"] == "BOOKMARK"
        ]

    async def finished(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


StartWatch = Callable[..., Awaitable[WatchRun]]


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api(kube: KubeApiServer) -> Iterator[client.ApiClient]:
    api_client_ = api_client(kube.port, retries=0)
    yield api_client_
    api_client_.close()


@pytest.fixture
def v1(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
async def start_watch(kube: KubeApiServer, v1: client.CoreV1Api) -> AsyncIterator[StartWatch]:
    """Start a pod watch and wait until the server has it open; all end at teardown."""
    runs: list[WatchRun] = []

    async def _start(*, timeout_seconds: int | None = 20, **kwargs: Any) -> WatchRun:
        # The client disables its retries whenever the key is present, even as None.
        if timeout_seconds is not None:
            kwargs["timeout_seconds"] = timeout_seconds
        open_before = kube.active_watches("pods")
        run = WatchRun(v1.list_namespaced_pod, NS, **kwargs)
        runs.append(run)
        await wait_for(
            lambda: kube.active_watches("pods") > open_before or run.task.done(),
            what="the watch to open (or fail)",
        )
        return run

    yield _start
    kube.close_watches(abrupt=False)
    for run in runs:
        await run.finished()


async def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(func, *args, **kwargs)


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def add_llm_pod(kube: KubeApiServer, name: str, ip: str, ready: bool = True) -> None:
    kube.add_pod(NS, name, {**LLM, "tier": "gpu"}, ip, ready)


async def test_version_and_health_endpoints(kube: KubeApiServer, api: client.ApiClient) -> None:
    info = await call(client.VersionApi(api).get_code)
    assert (info.major, info.minor) == ("1", "37")
    async with aiohttp.ClientSession() as session, session.get(f"{kube.url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"
    # Non-resource URLs are counted apart from (resource, verb) requests.
    assert kube.requests == {}
    assert kube.api.non_resource_counts == {("/version", "get"): 1, ("/healthz", "get"): 1}


async def test_list_pods_with_label_selectors(kube: KubeApiServer, v1: client.CoreV1Api) -> None:
    kube.add_pod(NS, "gpu-0", {"app": "llm", "tier": "gpu"}, "10.0.0.1", True, container_port=9000)
    kube.add_pod(NS, "cpu-0", {"app": "llm", "tier": "cpu"}, "10.0.0.2", False)
    kube.add_pod(NS, "web-0", {"app": "web"}, "10.0.0.3", True)
    kube.add_pod("other", "gpu-9", {"app": "llm", "tier": "gpu"}, "10.0.1.1", True)

    async def names(selector: str) -> list[str]:
        pods = await call(v1.list_namespaced_pod, NS, label_selector=selector)
        assert pods.metadata.resource_version == str(kube.resource_version)
        return [p.metadata.name for p in pods.items]

    assert await names("app=llm") == ["cpu-0", "gpu-0"]
    assert await names("app==llm,tier!=cpu") == ["gpu-0"]
    assert await names("tier in (gpu, tpu)") == ["gpu-0"]
    assert await names("app notin (web)") == ["cpu-0", "gpu-0"]
    assert await names("tier") == ["cpu-0", "gpu-0"]
    assert await names("!tier") == ["web-0"]
    assert await names("") == ["cpu-0", "gpu-0", "web-0"]

    pods = await call(v1.list_namespaced_pod, NS, label_selector="tier=gpu")
    pod = pods.items[0]
    assert isinstance(pod, client.V1Pod)
    assert pod.status.pod_ip == "10.0.0.1" and pod.status.phase == "Running"
    assert pod.spec.containers[0].ports[0].container_port == 9000
    ready = [c.status for c in pod.status.conditions if c.type == "Ready"]
    assert ready == ["True"]

    everywhere = await call(v1.list_pod_for_all_namespaces, label_selector="tier=gpu")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [
        (NS, "gpu-0"),
        ("other", "gpu-9"),
    ]
    with pytest.raises(ApiException) as err:
        await call(v1.list_namespaced_pod, NS, label_selector="tier in gpu")
    assert err.value.status == 400
    assert kube.list_count() == 10 and kube.watch_count() == 0


async def test_read_pod_and_not_found_status(kube: KubeApiServer, v1: client.CoreV1Api) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    pod = await call(v1.read_namespaced_pod, "gpu-0", NS)
    assert pod.metadata.uid and pod.metadata.creation_timestamp is not None
    with pytest.raises(ApiException) as err:
        await call(v1.read_namespaced_pod, "missing", NS)
    assert err.value.status == 404
    status = status_of(err.value)
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["message"] == 'pods "missing" not found'
    assert status["details"] == {"name": "missing", "kind": "pods"}


async def test_watch_streams_changes_in_order_then_bookmarks(
    kube: KubeApiServer, v1: client.CoreV1Api, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    listed = await call(v1.list_namespaced_pod, NS, label_selector="app=llm")
    run = await start_watch(
        label_selector="app=llm",
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
    )
    add_llm_pod(kube, "gpu-1", "10.0.0.2", ready=False)
    kube.add_pod(NS, "web-0", {"app": "web"}, "10.0.0.9", True)  # filtered out
    kube.set_pod_ready(NS, "gpu-1", True)
    kube.delete_pod(NS, "gpu-0")
    kube.finalize_pod_deletion(NS, "gpu-0")
    await wait_for(lambda: len(run.changes()) >= 4, what="four pod events")
    assert run.changes() == [
        ("ADDED", "gpu-1"),
        ("MODIFIED", "gpu-1"),
        ("MODIFIED", "gpu-0"),
        ("DELETED", "gpu-0"),
    ]
    events = [e for e in run.events if e["type"] != "BOOKMARK"]
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert all(isinstance(e["object"], client.V1Pod) for e in events)
    assert events[2]["object"].metadata.deletion_timestamp is not None
    assert events[2]["object"].metadata.deletion_grace_period_seconds == 30
    assert versions[-1] == kube.resource_version

    # Idle: periodic bookmarks carry the newest version (nothing newer is unsent).
    seen = len(run.bookmarks())
    await wait_for(lambda: len(run.bookmarks()) > seen, what="a bookmark")
    assert run.bookmarks()[-1] == str(kube.resource_version)
    assert run.watch.resource_version == str(kube.resource_version)
    assert (kube.list_count(), kube.watch_count()) == (1, 1)  # no relist per event


async def test_watch_selector_transitions_are_deleted_and_added(
    kube: KubeApiServer, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    run = await start_watch(label_selector="app=llm", resource_version=str(kube.resource_version))
    kube.set_pod_labels(NS, "gpu-0", {"app": "retired"})
    left_at = kube.resource_version
    kube.set_pod_labels(NS, "gpu-0", {"app": "retired", "x": "1"})  # not seen
    kube.set_pod_labels(NS, "gpu-0", LLM)
    await wait_for(lambda: len(run.changes()) >= 2, what="two events")
    assert run.changes() == [("DELETED", "gpu-0"), ("ADDED", "gpu-0")]
    gone = run.events[0]["raw_object"]["metadata"]
    assert gone["labels"] == {**LLM, "tier": "gpu"}  # the last state that matched...
    assert gone["resourceVersion"] == str(left_at)  # ...at the version it stopped matching


async def test_watch_without_resource_version_starts_with_synthetic_added(
    kube: KubeApiServer, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    add_llm_pod(kube, "gpu-1", "10.0.0.2")
    run = await start_watch(label_selector="app=llm")
    add_llm_pod(kube, "gpu-2", "10.0.0.3")
    await wait_for(lambda: len(run.changes()) >= 3, what="three events")
    assert run.changes() == [("ADDED", "gpu-0"), ("ADDED", "gpu-1"), ("ADDED", "gpu-2")]


async def test_watch_from_compacted_version_is_410_expired(
    kube: KubeApiServer, v1: client.CoreV1Api, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    old = kube.resource_version
    kube.set_pod_ready(NS, "gpu-0", False)
    kube.compact()
    current = kube.resource_version

    # On the wire: HTTP 200, then one ERROR event with an Expired Status, then the end.
    url = f"{kube.url}/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={old}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        lines = (await resp.read()).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({current})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]

    # The client raises ApiException(410) at once when timeout_seconds is set...
    watches = kube.watch_count()
    run = await start_watch(resource_version=str(old), timeout_seconds=5)
    await run.finished()
    assert isinstance(run.error, ApiException) and run.error.status == 410
    assert run.error.reason == f"Expired: too old resource version: {old} ({current})"
    assert kube.watch_count() == watches + 1
    # ...and after one retry from the same version when it is not.
    run = await start_watch(resource_version=str(old), timeout_seconds=None)
    await run.finished()
    assert isinstance(run.error, ApiException) and run.error.status == 410
    assert kube.watch_count() == watches + 3

    # From the current version the watch is fine.
    run = await start_watch(resource_version=str(current))
    kube.set_pod_ready(NS, "gpu-0", True)
    await wait_for(lambda: run.changes() == [("MODIFIED", "gpu-0")], what="event after compaction")


async def test_dropped_watch_resumes_from_last_version_without_relist(
    kube: KubeApiServer, start_watch: StartWatch
) -> None:
    run = await start_watch(resource_version=str(kube.resource_version))
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    await wait_for(lambda: run.changes() == [("ADDED", "gpu-0")], what="first event")
    assert kube.close_watches(abrupt=True) == 1
    await run.finished()
    assert isinstance(run.error, urllib3.exceptions.ProtocolError)
    assert kube.active_watches() == 0

    add_llm_pod(kube, "gpu-1", "10.0.0.2")  # while nobody watches
    assert run.watch.resource_version is not None
    resumed = await start_watch(resource_version=run.watch.resource_version)
    await wait_for(lambda: resumed.changes() == [("ADDED", "gpu-1")], what="missed event")
    assert (kube.list_count(), kube.watch_count()) == (0, 2)


async def test_clean_close_and_timeout_end_the_stream(
    kube: KubeApiServer, start_watch: StartWatch
) -> None:
    run = await start_watch(timeout_seconds=30)
    assert kube.close_watches(abrupt=False) == 1
    await run.finished()
    assert run.error is None

    begun = time.monotonic()
    run = await start_watch(timeout_seconds=1)
    await run.finished(timeout=5)
    assert run.error is None and time.monotonic() - begun >= 0.9
    assert kube.watch_count() == 2  # no automatic re-watch when timeout_seconds is given


async def test_bookmark_on_demand() -> None:
    async with KubeApiServer(bookmark_interval=None) as kube:
        api = api_client(kube.port)
        try:
            v1 = client.CoreV1Api(api)
            plain = WatchRun(v1.list_namespaced_pod, NS, timeout_seconds=20)
            run = WatchRun(
                v1.list_namespaced_pod, NS, allow_watch_bookmarks=True, timeout_seconds=20
            )
            await wait_for(lambda: kube.active_watches("pods") == 2, what="two watches")
            add_llm_pod(kube, "gpu-0", "10.0.0.1")
            kube.bookmark()
            await wait_for(lambda: len(run.bookmarks()) == 1, what="bookmark")
            assert [e["type"] for e in run.events] == ["ADDED", "BOOKMARK"]
            assert run.bookmarks() == [str(kube.resource_version)]
            await wait_for(lambda: len(plain.events) == 1, what="event")
            kube.close_watches(abrupt=False)
            await run.finished()
            await plain.finished()
            assert [e["type"] for e in plain.events] == ["ADDED"]  # no bookmarks unasked
        finally:
            api.close()


async def test_patch_pod_annotations_and_labels(kube: KubeApiServer, v1: client.CoreV1Api) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    cost = "controller.kubernetes.io/pod-deletion-cost"
    patched = await call(
        v1.patch_namespaced_pod, "gpu-0", NS, {"metadata": {"annotations": {cost: "-5"}}}
    )
    assert patched.metadata.annotations == {cost: "-5"}
    assert patched.metadata.resource_version == str(kube.resource_version)
    stored = kube.pod(NS, "gpu-0")
    assert stored is not None and stored["metadata"]["annotations"] == {cost: "-5"}

    # The same patch again changes nothing, so it is no write at all.
    again = await call(
        v1.patch_namespaced_pod, "gpu-0", NS, {"metadata": {"annotations": {cost: "-5"}}}
    )
    assert again.metadata.resource_version == patched.metadata.resource_version

    # RFC 7386 merge patch: null deletes.
    merged = await call(
        v1.patch_namespaced_pod,
        "gpu-0",
        NS,
        {"metadata": {"annotations": {cost: None}, "labels": {"warm": "true"}}},
        _content_type="application/merge-patch+json",
    )
    assert not merged.metadata.annotations
    assert merged.metadata.labels == {**LLM, "tier": "gpu", "warm": "true"}

    # RFC 6902 JSON patch (a list body).
    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}}]
    jsoned = await call(v1.patch_namespaced_pod, "gpu-0", NS, ops)
    assert jsoned.metadata.annotations == {"a": "1"}

    # A resourceVersion in the patch is a precondition.
    stale = {
        "metadata": {"resourceVersion": patched.metadata.resource_version, "labels": {"x": "y"}}
    }
    with pytest.raises(ApiException) as err:
        await call(v1.patch_namespaced_pod, "gpu-0", NS, stale)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"


async def test_pod_delete_through_the_api_is_graceful(
    kube: KubeApiServer, v1: client.CoreV1Api
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    add_llm_pod(kube, "gpu-1", "10.0.0.2")
    deleting = await call(v1.delete_namespaced_pod, "gpu-0", NS)
    assert deleting.metadata.deletion_timestamp is not None
    assert deleting.metadata.deletion_grace_period_seconds == 30
    assert [p["metadata"]["name"] for p in kube.pods(NS)] == ["gpu-0", "gpu-1"]
    kube.finalize_pod_deletion(NS, "gpu-0")
    await call(v1.delete_namespaced_pod, "gpu-1", NS, grace_period_seconds=0)
    assert kube.pods(NS) == []


async def test_deployment_scale_read_patch_and_history(
    kube: KubeApiServer, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    calls: list[tuple[str, str, str, int]] = []
    kube.on_scale = lambda kind, ns, name, replicas: calls.append((kind, ns, name, replicas))
    kube.add_deployment(NS, "llm", 2)

    scale = await call(apps.read_namespaced_deployment_scale, "llm", NS)
    assert isinstance(scale, client.V1Scale) and scale.kind == "Scale"
    assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (2, 2, "app=llm")

    before = time.monotonic()
    patched = await call(
        apps.patch_namespaced_deployment_scale, "llm", NS, {"spec": {"replicas": 5}}
    )
    after = time.monotonic()
    assert patched.spec.replicas == 5
    [record] = kube.scale_history
    assert (record.kind, record.namespace, record.name, record.replicas, record.previous) == (
        "Deployment",
        NS,
        "llm",
        5,
        2,
    )
    assert before <= record.at <= after
    assert calls == [("Deployment", NS, "llm", 5)]

    deployment = await call(apps.read_namespaced_deployment, "llm", NS)
    assert deployment.spec.replicas == 5 and deployment.metadata.generation == 2
    assert deployment.status.observed_generation == 2 and deployment.status.replicas == 5

    # Same replica count: no write, no record.
    await call(apps.patch_namespaced_deployment_scale, "llm", NS, {"spec": {"replicas": 5}})
    assert len(kube.scale_history) == 1

    # Scale.spec.replicas is omitempty: 0 comes back as absent.
    await call(apps.patch_namespaced_deployment_scale, "llm", NS, {"spec": {"replicas": 0}})
    zero = await call(apps.read_namespaced_deployment_scale, "llm", NS)
    assert zero.spec.replicas is None and kube.replicas("Deployment", NS, "llm") == 0

    with pytest.raises(ApiException) as err:
        await call(apps.patch_namespaced_deployment_scale, "llm", NS, {"spec": {"replicas": -1}})
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        await call(apps.read_namespaced_deployment_scale, "absent", NS)
    assert status_of(err.value)["message"] == 'deployments.apps "absent" not found'


async def test_statefulset_scale_put_uses_optimistic_concurrency(
    kube: KubeApiServer, api: client.ApiClient
) -> None:
    apps = client.AppsV1Api(api)
    kube.add_statefulset(NS, "llm", 1)
    scale = await call(apps.read_namespaced_stateful_set_scale, "llm", NS)
    kube.set_workload_status("StatefulSet", NS, "llm", 1, ready_replicas=0)  # a newer version
    scale.spec.replicas = 3
    with pytest.raises(ApiException) as err:
        await call(apps.replace_namespaced_stateful_set_scale, "llm", NS, scale)
    assert err.value.status == 409
    assert status_of(err.value)["message"].startswith(
        'Operation cannot be fulfilled on statefulsets.apps "llm": the object has been modified'
    )
    fresh = await call(apps.read_namespaced_stateful_set_scale, "llm", NS)
    fresh.spec.replicas = 3
    replaced = await call(apps.replace_namespaced_stateful_set_scale, "llm", NS, fresh)
    assert replaced.spec.replicas == 3
    assert [(r.kind, r.replicas) for r in kube.scale_history] == [("StatefulSet", 3)]


def lease_spec(holder: str, at: dt.datetime) -> client.V1LeaseSpec:
    return client.V1LeaseSpec(
        holder_identity=holder,
        lease_duration_seconds=15,
        acquire_time=at,
        renew_time=at,
        lease_transitions=0,
    )


async def test_lease_create_conflict_and_update(kube: KubeApiServer, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    with pytest.raises(ApiException) as err:
        await call(coord.read_namespaced_lease, "leader", NS)
    assert err.value.status == 404

    body = client.V1Lease(metadata=client.V1ObjectMeta(name="leader"), spec=lease_spec("a", now))
    created = await call(coord.create_namespaced_lease, NS, body)
    assert created.spec.holder_identity == "a" and created.metadata.resource_version
    stored = kube.lease(NS, "leader")
    assert stored is not None and stored["spec"]["renewTime"] == "2026-01-02T03:04:05.678901Z"
    with pytest.raises(ApiException) as err:
        await call(coord.create_namespaced_lease, NS, body)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"

    read = await call(coord.read_namespaced_lease, "leader", NS)
    read.spec.renew_time = now + dt.timedelta(seconds=5)
    renewed = await call(coord.replace_namespaced_lease, "leader", NS, read)
    assert int(renewed.metadata.resource_version) > int(read.metadata.resource_version)

    read.spec.holder_identity = "b"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        await call(coord.replace_namespaced_lease, "leader", NS, read)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"

    read.metadata.resource_version = None  # leases never allow an unconditional update
    with pytest.raises(ApiException) as err:
        await call(coord.replace_namespaced_lease, "leader", NS, read)
    assert err.value.status == 422

    # MicroTime needs six fractional digits: isoformat() at microsecond 0 has none.
    renewed.spec.renew_time = now.replace(microsecond=0)
    with pytest.raises(ApiException) as err:
        await call(coord.replace_namespaced_lease, "leader", NS, renewed)
    assert err.value.status == 400
    lease = kube.lease(NS, "leader")
    assert lease is not None and lease["spec"]["holderIdentity"] == "a"


async def test_injected_errors_surface_as_api_exceptions(
    kube: KubeApiServer, v1: client.CoreV1Api, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    kube.inject_errors(1, 500)
    with pytest.raises(ApiException) as err:
        await call(v1.list_namespaced_pod, NS)
    assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    assert len((await call(v1.list_namespaced_pod, NS)).items) == 1

    kube.inject_errors(1, 429, resource="pods", verb="watch", retry_after=2)
    run = await start_watch(resource_version=str(kube.resource_version))
    await run.finished()
    assert isinstance(run.error, ApiException) and run.error.status == 429
    assert run.error.headers is not None and run.error.headers["Retry-After"] == "2"

    kube.fail_for(0.3, 503)
    with pytest.raises(ApiException) as err:
        await call(v1.read_namespaced_pod, "gpu-0", NS)
    assert err.value.status == 503

    async def recovered() -> bool:
        try:
            await call(v1.read_namespaced_pod, "gpu-0", NS)
        except ApiException:
            return False
        return True

    await wait_for(recovered, timeout=5, what="the outage to end")


async def test_unreachable_server_refuses_then_recovers(
    kube: KubeApiServer, v1: client.CoreV1Api, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    run = await start_watch(resource_version=str(kube.resource_version))
    await kube.set_unreachable()
    await run.finished()
    assert isinstance(run.error, urllib3.exceptions.ProtocolError)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        await call(v1.list_namespaced_pod, NS)
    await kube.set_reachable()
    assert len((await call(v1.list_namespaced_pod, NS)).items) == 1


async def test_exact_list_rebuilds_an_older_version(
    kube: KubeApiServer, v1: client.CoreV1Api
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    then = kube.resource_version
    add_llm_pod(kube, "gpu-1", "10.0.0.2")
    kube.delete_pod(NS, "gpu-0")
    kube.finalize_pod_deletion(NS, "gpu-0")
    old = await call(
        v1.list_namespaced_pod, NS, resource_version=str(then), resource_version_match="Exact"
    )
    assert old.metadata.resource_version == str(then)
    assert [p.metadata.name for p in old.items] == ["gpu-0"]
    kube.compact()
    with pytest.raises(ApiException) as err:
        await call(
            v1.list_namespaced_pod, NS, resource_version=str(then), resource_version_match="Exact"
        )
    assert err.value.status == 410


async def test_send_initial_events_and_field_selector(
    kube: KubeApiServer, start_watch: StartWatch
) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    add_llm_pod(kube, "gpu-1", "10.0.0.2")
    run = await start_watch(
        field_selector="status.podIP!=10.0.0.1",
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
    )
    await wait_for(lambda: len(run.events) >= 2, what="initial events")
    added, end = run.events[:2]
    assert (added["type"], added["raw_object"]["metadata"]["name"]) == ("ADDED", "gpu-1")
    assert end["type"] == "BOOKMARK"
    assert end["raw_object"]["metadata"] == {
        "resourceVersion": str(kube.resource_version),
        "annotations": {"k8s.io/initial-events-end": "true"},
    }


async def test_protocol_edges_over_plain_http(kube: KubeApiServer) -> None:
    add_llm_pod(kube, "gpu-0", "10.0.0.1")
    pods = f"{kube.url}/api/v1/namespaces/{NS}/pods"
    async with aiohttp.ClientSession() as session:
        async with session.get(pods) as resp:
            listed = await resp.json()
        assert listed["kind"] == "PodList" and listed["apiVersion"] == "v1"
        assert "kind" not in listed["items"][0]  # list items carry no type meta on the wire
        async with session.get(f"{pods}?watch=1&resourceVersionMatch=NotOlderThan") as resp:
            assert resp.status == 422
        async with session.get(f"{pods}?fieldSelector=spec.unknown%3Dx") as resp:
            assert resp.status == 400
        async with session.get(f"{kube.url}/api/v1/namespaces/{NS}/services") as resp:
            assert resp.status == 404 and (await resp.json())["kind"] == "Status"
        headers = {"Content-Type": "application/apply-patch+yaml"}
        async with session.patch(f"{pods}/gpu-0", data=b"{}", headers=headers) as resp:
            assert resp.status == 415
        lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "x"}}
        leases = f"{kube.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        async with session.put(f"{leases}/l", json=lease) as resp:
            assert resp.status == 201  # leases may be created by PUT
        async with session.delete(f"{leases}/l") as resp:
            body = await resp.json()
        assert body["status"] == "Success" and body["details"]["kind"] == "leases"
