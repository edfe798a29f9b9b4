"""Render an Envoy bootstrap from config: static resources built by ``resources``."""

from __future__ import annotations

import json

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from google.protobuf import json_format

from warmroute.config import Config
from warmroute.xds import resources
from warmroute.xds.resources import Endpoint

NODE_CLUSTER = "warmroute"  # the bootstrap's node.cluster unless told otherwise


def static_bootstrap(
    cfg: Config, node_id: str = "warmroute-envoy", cluster: str = NODE_CLUSTER
) -> bootstrap_pb2.Bootstrap:
    """Everything inline: listener, routes, the control cluster and one STATIC cluster per
    pool listing every configured replica. Which replica is routable is decided per
    request by warmroute, so loading replicas may sit in the cluster harmlessly."""
    addresses = cfg.envoy.for_node(node_id, cluster)
    clusters = [resources.control_cluster(cfg)]
    for pool in cfg.pools:
        endpoints = [Endpoint(r.address) for r in pool.all_replicas()]
        clusters.append(resources.pool_cluster(pool, static_endpoints=endpoints))
    boot = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster=cluster),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=[
                resources.listener(
                    cfg, resources.route_configuration(cfg), address=addresses.listen
                )
            ],
            clusters=clusters,
        ),
    )
    boot.admin.address.CopyFrom(resources.socket_address(addresses.admin))
    _report_load(boot)
    return boot


def ads_bootstrap(
    cfg: Config,
    node_id: str = "warmroute-envoy",
    variant: str | None = None,
    cluster: str = NODE_CLUSTER,
) -> bootstrap_pb2.Bootstrap:
    """The minimal bootstrap: who this Envoy is, where warmroute is, admin on loopback.

    Listeners, routes, clusters and endpoints all come over ADS; the one static cluster
    reaches warmroute itself (xDS, ext_proc and the access log share it). ``node_id`` and
    ``cluster`` pick the node's own settings in ``envoy.nodes`` (its admin address here;
    its listener comes over LDS).
    """
    variant = variant or cfg.xds.variant
    clusters = [resources.control_cluster(cfg)]
    xds = resources.xds_cluster(cfg)
    if xds is not None:
        clusters.append(xds)
    api = config_source_pb2.ApiConfigSource
    ads = api(
        api_type=api.DELTA_GRPC if variant == "delta" else api.GRPC,
        transport_api_version=config_source_pb2.ApiVersion.V3,
        grpc_services=[
            grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=xds.name if xds is not None else resources.CONTROL_CLUSTER
                )
            )
        ],
        set_node_on_first_message_only=True,
    )
    boot = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster=cluster),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=ads,
            cds_config=resources.ads_config_source(),
            lds_config=resources.ads_config_source(),
        ),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(clusters=clusters),
    )
    boot.admin.address.CopyFrom(
        resources.socket_address(cfg.envoy.for_node(node_id, cluster).admin)
    )
    _report_load(boot)
    return boot


def _report_load(boot: bootstrap_pb2.Bootstrap) -> None:
    """Envoy reports its requests in progress per endpoint to warmroute (LRS), which is
    how a restarted control plane learns what it did not lease (``xds.lrs``)."""
    api = config_source_pb2.ApiConfigSource
    boot.cluster_manager.load_stats_config.CopyFrom(
        api(
            api_type=api.GRPC,
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                        cluster_name=resources.CONTROL_CLUSTER
                    )
                )
            ],
        )
    )


def to_json(msg: bootstrap_pb2.Bootstrap) -> str:
    """JSON Envoy accepts as a ``-c`` file."""
    return json.dumps(json_format.MessageToDict(msg), indent=2)


def to_yaml(msg: bootstrap_pb2.Bootstrap) -> str:
    """The same document as YAML, for people to read and keep in a ConfigMap."""
    plain = json.loads(to_json(msg))  # Any fields come back as OrderedDicts yaml cannot dump
    return yaml.safe_dump(plain, sort_keys=False, width=100)
