"""The test API server serves ``InferencePool`` (inference.networking.k8s.io/v1) custom
objects to the REAL official client (``CustomObjectsApi``): every verb, the CRD's defaults
and validation, watch events with bookmarks, and 410 after compaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.helpers import wait_for
from tests.kubeapi import KubeApiServer, api_client
from tests.kubeapi.resources import make_inference_pool

NS = "inference"
G, V, P = "inference.networking.k8s.io", "v1", "inferencepools"


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def custom(kube: KubeApiServer) -> Iterator[client.CustomObjectsApi]:
    api = api_client(kube.port, retries=0)
    yield client.CustomObjectsApi(api)
    api.close()


async def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(func, *args, **kwargs)


def pool(name: str = "llama", ports: list[int] | None = None, **kw: Any) -> dict[str, Any]:
    return make_inference_pool(NS, name, {"app": "llama"}, ports or [8000], **kw)


async def test_create_defaults_get_list_and_not_found(
    kube: KubeApiServer, custom: client.CustomObjectsApi
) -> None:
    created = await call(
        custom.create_namespaced_custom_object, G, V, NS, P, pool(failure_mode=None)
    )
    assert created["kind"] == "InferencePool"
    assert created["apiVersion"] == "inference.networking.k8s.io/v1"
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    # The CRD's structural defaults are filled in by the server.
    assert created["spec"]["appProtocol"] == "http"
    assert created["spec"]["endpointPickerRef"] == {
        "name": "warmroute-epp",
        "port": {"number": 9002},
        "group": "",
        "kind": "Service",
        "failureMode": "FailClose",
    }
    got = await call(custom.get_namespaced_custom_object, G, V, NS, P, "llama")
    assert got == created
    kube.add_inference_pool(NS, "other", {"app": "x"}, [9000, 9001], failure_mode="FailOpen")
    listed = await call(custom.list_namespaced_custom_object, G, V, NS, P)
    assert listed["kind"] == "InferencePoolList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["llama", "other"]
    assert listed["metadata"]["resourceVersion"] == str(kube.resource_version)
    one = await call(
        custom.list_namespaced_custom_object, G, V, NS, P, field_selector="metadata.name=other"
    )
    assert [i["spec"]["targetPorts"] for i in one["items"]] == [
        [{"number": 9000}, {"number": 9001}]
    ]
    with pytest.raises(ApiException) as err:
        await call(custom.get_namespaced_custom_object, G, V, NS, P, "missing")
    assert err.value.status == 404
    body = json.loads(err.value.body)
    assert body["message"] == 'inferencepools.inference.networking.k8s.io "missing" not found'
    with pytest.raises(ApiException) as err:
        await call(custom.create_namespaced_custom_object, G, V, NS, P, pool())
    assert err.value.status == 409


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.update(targetPorts=[{"number": 8000 + i} for i in range(9)]), "targetPorts"),
        (lambda s: s.update(targetPorts=[]), "spec.targetPorts"),
        (lambda s: s.update(targetPorts=[{"number": 80}, {"number": 80}]), "spec.targetPorts"),
        (lambda s: s.update(targetPorts=[{"number": 0}]), "spec.targetPorts[0].number"),
        (lambda s: s["selector"].update(matchLabels={}), "spec.selector.matchLabels"),
        (lambda s: s.update(appProtocol="grpc"), "spec.appProtocol"),
        (lambda s: s["endpointPickerRef"].update(failureMode="Open"), "failureMode"),
        (lambda s: s["endpointPickerRef"].pop("port"), "spec.endpointPickerRef"),
        (lambda s: s["endpointPickerRef"].pop("name"), "spec.endpointPickerRef.name"),
    ],
    ids=["9-ports", "no-ports", "dup-ports", "port-0", "no-labels", "protocol", "mode",
         "service-without-port", "no-picker-name"],
)  # fmt: skip
async def test_invalid_objects_are_422_naming_the_field(
    custom: client.CustomObjectsApi, mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    obj = pool()
    mutate(obj["spec"])
    with pytest.raises(ApiException) as err:
        await call(custom.create_namespaced_custom_object, G, V, NS, P, obj)
    assert err.value.status == 422
    body = json.loads(err.value.body)
    assert body["reason"] == "Invalid"
    assert field in body["details"]["causes"][0]["field"]


async def test_update_patch_conflict_and_delete(
    kube: KubeApiServer, custom: client.CustomObjectsApi
) -> None:
    created = kube.add_inference_pool(NS, "llama", {"app": "llama"}, [8000])
    stale = json.loads(json.dumps(created))
    created["spec"]["targetPorts"].append({"number": 8001})
    replaced = await call(custom.replace_namespaced_custom_object, G, V, NS, P, "llama", created)
    assert replaced["metadata"]["generation"] == 2
    assert [p["number"] for p in replaced["spec"]["targetPorts"]] == [8000, 8001]
    stale["spec"]["targetPorts"] = [{"number": 9}]
    with pytest.raises(ApiException) as err:  # optimistic concurrency
        await call(custom.replace_namespaced_custom_object, G, V, NS, P, "llama", stale)
    assert err.value.status == 409
    # The client sends a merge patch for a dict body.
    patch = {"spec": {"selector": {"matchLabels": {"app": "llama-v2"}}}}
    patched = await call(custom.patch_namespaced_custom_object, G, V, NS, P, "llama", patch)
    assert patched["spec"]["selector"] == {"matchLabels": {"app": "llama-v2"}}
    assert patched["metadata"]["generation"] == 3
    # Status belongs to the status subresource: a write to the main resource keeps it.
    patched["status"] = {"parents": [{"parentRef": {"name": "gw"}}]}
    again = await call(custom.replace_namespaced_custom_object, G, V, NS, P, "llama", patched)
    assert again["status"] == {} and again["metadata"]["generation"] == 3
    status = await call(custom.delete_namespaced_custom_object, G, V, NS, P, "llama")
    assert status["status"] == "Success"
    assert status["details"]["group"] == G
    assert kube.inference_pool(NS, "llama") is None


async def test_watch_events_bookmarks_and_410(
    kube: KubeApiServer, custom: client.CustomObjectsApi
) -> None:
    kube.add_inference_pool(NS, "llama", {"app": "llama"}, [8000])
    listed = await call(custom.list_namespaced_custom_object, G, V, NS, P)
    rv = listed["metadata"]["resourceVersion"]
    w = watch.Watch()
    events: list[dict[str, Any]] = []

    def run() -> None:
        for e in w.stream(
            custom.list_namespaced_custom_object, G, V, NS, P,
            field_selector="metadata.name=llama", resource_version=rv,
            allow_watch_bookmarks=True, timeout_seconds=20,
        ):  # fmt: skip
            events.append(e)

    task = asyncio.create_task(asyncio.to_thread(run))
    await wait_for(lambda: kube.active_watches("inferencepools") == 1, what="watch open")
    kube.add_inference_pool(NS, "other", {"app": "x"}, [1])  # filtered out by name
    kube.update_inference_pool(
        NS, "llama", lambda o: o["spec"].update(targetPorts=[{"number": 8000}, {"number": 8001}])
    )
    kube.delete_inference_pool(NS, "llama")

    def changes() -> list[tuple[str, str]]:
        return [(e["type"], e["raw_object"]["metadata"]["name"]) for e in list(events)
                if e["type"] != "BOOKMARK"]  # fmt: skip

    await wait_for(lambda: len(changes()) >= 2, what="two events")
    assert changes() == [("MODIFIED", "llama"), ("DELETED", "llama")]
    seen = sum(e["type"] == "BOOKMARK" for e in events)
    await wait_for(lambda: sum(e["type"] == "BOOKMARK" for e in events) > seen, what="bookmark")
    kube.close_watches(abrupt=False)
    await asyncio.wait_for(task, 10)

    kube.compact()

    def expired() -> None:
        for _ in watch.Watch().stream(
            custom.list_namespaced_custom_object, G, V, NS, P, resource_version=rv,
            timeout_seconds=5,
        ):  # fmt: skip
            pass

    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(expired)
    assert err.value.status == 410
    assert kube.request_count("inferencepools", "watch") == 2
