"""HTTP handlers of the test API server: the REST verbs over a :class:`Store`.

One aiohttp handler (:meth:`KubeApi.handle`) resolves the path, names the verb, counts the
request, applies injected faults, then serves it with the registry rules kube-apiserver
applies per type:

* GET (object or ``scale``), LIST (``labelSelector``, ``fieldSelector``,
  ``resourceVersion`` + ``resourceVersionMatch``), WATCH (see :mod:`tests.kubeapi.watch`).
* POST creates (409 AlreadyExists); PUT replaces with optimistic concurrency (409 Conflict on
  a stale ``metadata.resourceVersion``; leases may be created by PUT but must carry a
  resourceVersion to update, else 422); PATCH (merge, strategic merge, JSON patch) honours a
  ``metadata.resourceVersion`` in the patch as a precondition.
* Writes to the main resource keep ``status`` (it belongs to the status subresource) and the
  deletion fields; pod ``spec`` is immutable (422). Scale PATCH/PUT change ``spec.replicas``.
* DELETE of a pod is graceful: ``deletionTimestamp`` + ``deletionGracePeriodSeconds`` are set
  (MODIFIED) and the pod is returned; it disappears when the test finalizes it (or at once
  with ``gracePeriodSeconds=0``). Other types go at once and answer a Success Status.

Every failure is a ``Status`` body with the real code and reason.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import string
from collections import Counter
from typing import Any

from aiohttp import web

from tests.kubeapi.faults import Faults
from tests.kubeapi.patch import apply_patch
from tests.kubeapi.request_info import (
    ListOptions,
    Target,
    parse_body,
    parse_list_options,
    parse_target,
    verb_of,
)
from tests.kubeapi.resources import PODS, ResourceType, admit, scale_view
from tests.kubeapi.status import (
    ApiError,
    bad_request,
    conflict,
    invalid,
    not_found,
    too_large,
)
from tests.kubeapi.store import Store
from tests.kubeapi.watch import WatchHub, WatchRequest

Obj = dict[str, Any]

VERSION_INFO = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "gitVersion": "v1.37.0-warmroute-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def json_response(body: Obj, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def error_response(err: ApiError) -> web.Response:
    resp = json_response(err.body(), err.code)
    if err.retry_after is not None:
        resp.headers["Retry-After"] = str(err.retry_after)
    return resp


def _strip_type(obj: Obj) -> Obj:
    """LIST items carry no ``kind``/``apiVersion`` on the wire; the list does."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class KubeApi:
    """The REST surface. ``counts[(resource, verb)]`` counts every resource request received
    (served or failed); ``non_resource_counts[(path, method)]`` counts ``/version``,
    ``/healthz`` and unknown paths, which RBAC would govern as ``nonResourceURLs``."""

    def __init__(
        self,
        store: Store,
        hub: WatchHub,
        faults: Faults,
        *,
        default_watch_timeout: float,
        simulate_controller: bool,
    ) -> None:
        self.store = store
        self.hub = hub
        self.faults = faults
        self.default_watch_timeout = default_watch_timeout
        self.simulate_controller = simulate_controller
        self.counts: Counter[tuple[str, str]] = Counter()
        self.non_resource_counts: Counter[tuple[str, str]] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = parse_target(request.path)
        if target is None:
            return self._non_resource(request)
        try:
            verb = verb_of(request.method, target, request.query)
            self.counts[(target.resource, verb)] += 1
            await self.faults.hold(target.resource, verb)
            fault = self.faults.check(target.resource, verb)
            if fault is not None:
                raise fault
            return await self._serve(request, target, verb)
        except ApiError as err:
            return error_response(err)

    def _non_resource(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        self.non_resource_counts[(path, request.method.lower())] += 1
        if request.method == "GET" and path == "/version":
            return json_response(VERSION_INFO)
        if request.method == "GET" and path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        return error_response(ApiError(404, "the server could not find the requested resource"))

    async def _serve(self, request: web.Request, target: Target, verb: str) -> web.StreamResponse:
        rt, ns, name = target.rt, target.namespace, target.name
        if verb in ("list", "watch"):
            opts = parse_list_options(request.query, rt)
            if opts.watch:
                return await self.hub.serve(request, self._watch_request(target, opts))
            return json_response(self._list(target, opts))
        raw = await request.read()
        if target.subresource == "scale":
            assert ns is not None and name is not None
            return self._scale(request, rt, ns, name, verb, raw)
        if verb == "create" and ns is not None:
            return json_response(self._create(rt, ns, parse_body(raw, rt)), 201)
        if ns is None or name is None:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if verb == "get":
            return json_response(self.store.get(rt, ns, name))
        if verb == "update":
            existing = self.store.find(rt.plural, ns, name)
            body = self._own_body(rt, ns, name, parse_body(raw, rt))
            if existing is None:
                if not rt.allow_create_on_update:
                    raise not_found(rt.group, rt.plural, name)
                return json_response(self._create(rt, ns, body), 201)
            self._check_rv(rt, existing, body, required=not rt.allow_unconditional_update)
            return json_response(self.store.update(rt, self._prepare(rt, existing, body)))
        if verb == "patch":
            existing = self.store.get(rt, ns, name)
            content_type = request.headers.get("Content-Type", "")
            patched = apply_patch(content_type, existing, parse_body(raw, rt))
            self._check_rv(rt, existing, patched, required=False)
            patched = self._own_body(rt, ns, name, patched, check=False)
            return json_response(self.store.update(rt, self._prepare(rt, existing, patched)))
        if verb == "delete":
            return self._delete(request, rt, ns, name, parse_body(raw, rt) if raw else None)
        raise ApiError(405, "the server does not allow this method on the requested resource")

    def _watch_request(self, target: Target, opts: ListOptions) -> WatchRequest:
        timeout = opts.timeout_seconds or self.default_watch_timeout
        return WatchRequest(
            target.rt,
            target.namespace,
            opts.labels,
            opts.fields,
            opts.resource_version,
            opts.bookmarks,
            opts.send_initial_events,
            float(timeout),
        )

    def _list(self, target: Target, opts: ListOptions) -> Obj:
        rt = target.rt
        if opts.rv_match == "Exact" and opts.resource_version is not None:
            items = self.store.objects_at(rt.plural, target.namespace, opts.resource_version)
            rv = opts.resource_version
        else:
            if opts.resource_version is not None and opts.resource_version > self.store.rv:
                raise too_large(opts.resource_version, self.store.rv)
            items, rv = self.store.objects(rt.plural, target.namespace), self.store.rv
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": [
                _strip_type(obj)
                for obj in items
                if opts.labels.matches(obj["metadata"].get("labels")) and opts.fields.matches(obj)
            ],
        }

    @staticmethod
    def _own_body(rt: ResourceType, ns: str, name: str, body: Any, check: bool = True) -> Obj:
        """The body as an object of this URL: 400 if it names another object."""
        if not isinstance(body, dict):
            raise bad_request(
                f"{rt.kind} in version {rt.version!r} cannot be handled: not an object"
            )
        meta = body.setdefault("metadata", {})
        if check and meta.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if check and meta.get("namespace") not in (None, "", ns):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["name"], meta["namespace"] = name, ns
        return body

    @staticmethod
    def _check_rv(rt: ResourceType, existing: Obj, new: Obj, *, required: bool) -> None:
        """Optimistic concurrency: a given resourceVersion must be the current one."""
        name = existing["metadata"]["name"]
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if not rv:
            if required:
                why = "must be specified for an update"
                raise invalid(rt.group, rt.kind, name, "metadata.resourceVersion", 0, why)
            return
        if str(rv) != existing["metadata"]["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)

    def _prepare(self, rt: ResourceType, existing: Obj, new: Obj) -> Obj:
        """Registry strategy for a user-supplied new state (PrepareForUpdate + validation)."""
        meta, old_meta = new["metadata"], existing["metadata"]
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        if rt.has_status:
            new["status"] = copy.deepcopy(existing.get("status") or {})
        if rt is PODS and new.get("spec") != existing.get("spec"):
            raise ApiError(
                422,
                f'Pod "{meta["name"]}" is invalid: spec: Forbidden: pod updates may not change '
                "fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
                "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
                "tolerations) or `spec.terminationGracePeriodSeconds`",
            )
        if rt.scalable and self.simulate_controller and new.get("spec") != existing.get("spec"):
            replicas = new["spec"].get("replicas", 1)
            generation = int(old_meta.get("generation", 1)) + 1
            new["status"].update(
                replicas=replicas, readyReplicas=replicas, observedGeneration=generation
            )
        admit(rt, new)
        return new

    def _create(self, rt: ResourceType, ns: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(
                f"{rt.kind} in version {rt.version!r} cannot be handled: not an object"
            )
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", ns):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    rt.group, rt.kind, "", "metadata.name", "", "name or generateName is required"
                )
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        meta["namespace"] = ns
        meta.pop("resourceVersion", None)
        if rt.has_status:  # PrepareForCreate: status is not the client's to set
            body["status"] = {"phase": "Pending"} if rt is PODS else {}
            if rt.scalable and self.simulate_controller:
                replicas = (body.get("spec") or {}).get("replicas", 1)
                body["status"] = {"replicas": replicas, "readyReplicas": replicas}
        admit(rt, body)
        return self.store.create(rt, body)

    def _scale(
        self, request: web.Request, rt: ResourceType, ns: str, name: str, verb: str, raw: bytes
    ) -> web.Response:
        existing = self.store.get(rt, ns, name)
        if verb == "get":
            return json_response(scale_view(existing))
        if verb == "update":
            scale = self._own_body(rt, ns, name, parse_body(raw, rt))
        elif verb == "patch":
            content_type = request.headers.get("Content-Type", "")
            scale = apply_patch(content_type, scale_view(existing), parse_body(raw, rt))
        else:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        self._check_rv(rt, existing, scale, required=False)
        replicas = (scale.get("spec") or {}).get("replicas", 0)  # omitempty: absent means 0
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            why = "must be greater than or equal to 0"
            raise invalid("autoscaling", "Scale", name, "spec.replicas", replicas, why)
        new = copy.deepcopy(existing)
        new["spec"]["replicas"] = replicas
        return json_response(scale_view(self.store.update(rt, self._prepare(rt, existing, new))))

    def _delete(
        self, request: web.Request, rt: ResourceType, ns: str, name: str, options: Any
    ) -> web.Response:
        existing = self.store.get(rt, ns, name)
        opts: Obj = options if isinstance(options, dict) else {}
        meta = existing["metadata"]
        pre = opts.get("preconditions") or {}
        if pre.get("uid") not in (None, meta["uid"]):
            why = (
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {meta['uid']}"
            )
            raise conflict(rt.group, rt.plural, name, why)
        if pre.get("resourceVersion") not in (None, meta["resourceVersion"]):
            why = (
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in meta: {meta['resourceVersion']}"
            )
            raise conflict(rt.group, rt.plural, name, why)
        if not rt.graceful_delete:
            removed = self.store.remove(rt, ns, name)
            details = {"name": name, "kind": rt.plural, "uid": removed["metadata"]["uid"]}
            if rt.group:
                details["group"] = rt.group
            body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            return json_response({**body, "details": details})
        grace = request.query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        if grace is None:
            grace = existing["spec"].get("terminationGracePeriodSeconds", 30)
        grace = int(grace)
        if grace <= 0 or not existing["spec"].get("nodeName"):
            return json_response(self.store.remove(rt, ns, name))
        current = meta.get("deletionGracePeriodSeconds")
        if current is not None and grace >= int(current):
            return json_response(existing)  # already terminating, no sooner than asked
        return json_response(self.store.update(rt, mark_deleting(existing, grace)))


def mark_deleting(pod: Obj, grace: int) -> Obj:
    """The pod with ``deletionTimestamp`` = now + grace and ``deletionGracePeriodSeconds``."""
    marked = copy.deepcopy(pod)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace)
    marked["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    marked["metadata"]["deletionGracePeriodSeconds"] = grace
    return marked
