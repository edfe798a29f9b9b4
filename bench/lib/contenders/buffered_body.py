"""Mechanism "A" for routing by the JSON body's model, for comparison only (bench-only;
warmroute itself uses mechanism "B", Envoy's ``json_to_metadata`` filter).

A: no ``json_to_metadata`` filter. Envoy's ext_proc filter has ``allow_mode_override``;
when the request headers carry no model header, the control plane answers them with
``mode_override.request_body_mode = BUFFERED``, Envoy then sends the whole request body on
the same gRPC stream, and the control plane parses it with ``json.loads`` (warmroute's own
``parse_body``) and answers the body message with the routing decision: the model header,
``clear_route_cache`` and the lease metadata, exactly what B's headers answer carries.
A request with the model header is decided on its headers, as before (its body is never
read, so nothing checks that it agrees with the header).

Everything else is warmroute unchanged: the same ``ControlPlane``, registry, leases, access
log and xDS; the listener it serves is rewritten by :func:`buffered_snapshot` and its
ext_proc servicer is :class:`BufferedBodyProcessor`. The control plane runs in its own
process: ``python -m bench.lib.contenders.buffered_body --config FILE`` (the
``bench.lib.serve plane`` protocol: a JSON ready line, then JSON commands on stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from bench.lib.child import Child
from bench.lib.contenders.warmroute import Warmroute, plane_config
from warmroute.config import Config
from warmroute.envoy_process import EnvoyProcess
from warmroute.extproc.processor import ExternalProcessor
from warmroute.front_end import OwnEnvoy
from warmroute.request.model import BodyModel, BodyState, parse_body
from warmroute.xds.bootstrap import ads_bootstrap, to_json
from warmroute.xds.resources import (
    BODY_NAMESPACE,
    EXT_PROC_FILTER,
    JSON_TO_METADATA_FILTER,
    POOL_METADATA_KEY,
)
from warmroute.xds.snapshot import LISTENER, Resource, Resources, Snapshot

HCM_FILTER = "envoy.filters.network.http_connection_manager"
MODULE = "bench.lib.contenders.buffered_body"  # the control plane's entry point

# The answer to request headers without a model header: "send me the whole body".
_ASK_FOR_BODY = ep.ProcessingResponse(
    request_headers=ep.HeadersResponse(),
    mode_override=processing_mode_pb2.ProcessingMode(
        request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED
    ),
)


# -- the listener -------------------------------------------------------------------------


def buffered_listener(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """A copy of warmroute's listener for mechanism A: ``json_to_metadata`` removed, and
    ext_proc allowed to override its processing mode (to ask for the body) and no longer
    forwarding the ``warmroute.body`` namespace (nothing writes it)."""
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name != HCM_FILTER:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            kept = [f for f in hcm.http_filters if f.name != JSON_TO_METADATA_FILTER]
            for http_filter in kept:
                if http_filter.name == EXT_PROC_FILTER:
                    ext = ext_proc_pb2.ExternalProcessor()
                    http_filter.typed_config.Unpack(ext)
                    ext.allow_mode_override = True
                    ext.metadata_options.ClearField("forwarding_namespaces")
                    http_filter.typed_config.Pack(ext)
            del hcm.http_filters[:]
            hcm.http_filters.extend(kept)
            network_filter.typed_config.Pack(hcm)
    return out


def buffered_snapshot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with every listener rewritten by :func:`buffered_listener`."""
    rewritten = []
    for name, resource in snapshot.of_type(LISTENER).items.items():
        listener = listener_pb2.Listener()
        resource.packed.Unpack(listener)
        rewritten.append(Resource.of(name, buffered_listener(listener)))
    return snapshot.with_type(LISTENER, Resources.of(rewritten))


# -- the ext_proc servicer ----------------------------------------------------------------


def note_body_model(request: ep.ProcessingRequest, body: BodyModel) -> None:
    """Write what parsing the body found into ``request``'s metadata the way B's
    ``json_to_metadata`` rules write it, so warmroute's own decision code reads it."""
    if body.state is BodyState.NONE:
        return
    fields = request.metadata_context.filter_metadata[BODY_NAMESPACE].fields
    if body.state is BodyState.MODEL:
        fields["model"].string_value = body.model or ""
    else:
        fields["body"].string_value = body.state.value  # "no_model" / "invalid"
    if body.stream:
        fields["stream"].string_value = "true"


def as_body_response(decision: ep.ProcessingResponse) -> ep.ProcessingResponse:
    """A decision built as an answer to request headers, turned into the answer to the
    buffered request body (the same mutations; Envoy still holds the headers)."""
    if not decision.HasField("request_headers"):
        return decision  # an immediate response (rejection) ends the request either way
    out = ep.ProcessingResponse()
    out.request_body.response.CopyFrom(decision.request_headers.response)
    out.dynamic_metadata.CopyFrom(decision.dynamic_metadata)
    return out


def has_header(headers: ep.HttpHeaders, name: str) -> bool:
    """Whether ``headers`` carry ``name`` with a non-empty value."""
    return any(h.key == name and (h.raw_value or h.value) for h in headers.headers.headers)


class BufferedBodyProcessor(ExternalProcessor):
    """warmroute's ext_proc servicer, with the body's model read by mechanism A. Only the
    stream handling is new; every decision is warmroute's own ``_decide``, which reads the
    body's model from the request's ``warmroute.body`` metadata (here written by us)."""

    bodies = 0  # request bodies parsed here: > 0 shows mechanism A is really in place

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        routed_pool = next(
            (str(v) for k, v in context.invocation_metadata() or () if k == POOL_METADATA_KEY),
            None,
        )
        request = await context.read()
        if request is grpc.aio.EOF or not request.HasField("request_headers"):
            return  # only request headers come first; anything else: no processing
        headers = request.request_headers
        if headers.end_of_stream or has_header(headers, self._model_header):
            await context.write(await self._decide(request, routed_pool))
            return
        await context.write(_ASK_FOR_BODY)
        body = await context.read()
        if body is grpc.aio.EOF or not body.HasField("request_body"):
            return
        self.bodies += 1
        note_body_model(request, parse_body(body.request_body.body))
        await context.write(as_body_response(await self._decide(request, routed_pool)))


# -- the control-plane process ------------------------------------------------------------


async def run_plane(config_path: str) -> None:
    """The control plane with mechanism A, speaking the ``bench.lib.serve`` child protocol."""
    from bench.lib.serve import emit, serve_commands
    from warmroute.server import ControlPlane

    text = await asyncio.to_thread(Path(config_path).read_text)
    cfg = Config.model_validate(json.loads(text))
    plane = ControlPlane(cfg)
    assert isinstance(plane.front_end, OwnEnvoy)
    processor = BufferedBodyProcessor(plane.director, plane.registry, cfg.routing.model_header)
    plane.front_end.processor = processor
    _rewrite_snapshots(plane.manager)
    await plane.start()
    emit({"grpc": cfg.control.grpc, "admin": cfg.control.admin, "pid": os.getpid()})

    async def bodies(_: dict[str, Any]) -> dict[str, Any]:
        return {"bodies": processor.bodies}

    try:
        await serve_commands({"bodies": bodies})
    finally:
        await plane.stop()


def _rewrite_snapshots(manager: Any) -> None:
    """Every snapshot the config manager builds gets A's listener. Wraps the manager's
    snapshot builder (private, so: any arguments passed through, a clear error if it is
    gone; ``BufferedBody.bodies`` shows whether the rewrite took effect)."""
    build = getattr(manager, "_snapshot", None)
    if not callable(build):
        raise RuntimeError(
            "ConfigManager._snapshot is gone: update bench/lib/contenders/buffered_body"
        )

    def rewritten(*args: Any, **kwargs: Any) -> Snapshot:
        return buffered_snapshot(build(*args, **kwargs))

    manager._snapshot = rewritten


def main(argv: list[str] | None = None) -> None:
    from bench.lib.serve import _claim_stdout

    parser = argparse.ArgumentParser(prog="python -m bench.lib.contenders.buffered_body")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    _claim_stdout()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run_plane(args.config))


# -- the contender ------------------------------------------------------------------------


class BufferedBody(Warmroute):
    """warmroute with mechanism A: the control plane above + a real Envoy over ADS."""

    description = (
        "warmroute, body read by ext_proc itself: mode_override BUFFERED, json.loads in Python"
    )

    async def _start(self, addresses: list[str]) -> None:
        raw: dict[str, Any] = plane_config(addresses, self.backends.slots)
        cfg = Config.model_validate(raw)
        path = self.logs.path / f"{self.name}-config.json"
        path.write_text(json.dumps(raw, indent=2))
        self.plane = Child("plane", [], self.logs.file(f"{self.name}-plane"))
        self.plane.argv = [sys.executable, "-m", MODULE, "--config", str(path)]
        await self.plane.start_child()
        self.admin = cfg.control.admin
        self.port = int(cfg.envoy.listen.rpartition(":")[2])
        self.envoy = EnvoyProcess(
            to_json(ads_bootstrap(cfg, node_id="bench-envoy-a", variant="sotw")),
            cfg.envoy.admin,
            log_level="warning",
            log_path=str(self.logs.file(f"{self.name}-envoy")),
        )
        await self.envoy.start()

    async def bodies(self) -> int:
        """Request bodies the control plane parsed itself (mechanism A at work)."""
        assert self.plane is not None
        return int((await self.plane.call("bodies"))["bodies"])


if __name__ == "__main__":
    main()
