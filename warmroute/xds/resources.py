"""Envoy resources as ``xds-protos`` messages, independent of how they are delivered.

The same builders feed a static bootstrap (``warmroute.xds.bootstrap``) and, later, the
ADS server. Names are stable so resources can be diffed across versions.

Data path built here (see DESIGN.md, "Facts measured here"):
  listener -> HCM -> json_to_metadata (reads the JSON body's ``model`` and ``stream`` into
  ``warmroute.body`` metadata, in C++, before ext_proc sees the request) -> ext_proc
  (request headers only, with that metadata; writes ``envoy.lb`` and ``warmroute`` dynamic
  metadata) -> router -> pool cluster whose LB policy is ``override_host`` reading
  ``envoy.lb/x-gateway-destination-endpoint``; a gRPC access logger reports every finished
  request, with that metadata, back to warmroute.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2
from google.protobuf import any_pb2, duration_pb2, message, struct_pb2, wrappers_pb2

from warmroute.config import Config, EnvoyClientTls, PoolConfig
from warmroute.envoy_names import (
    BODY_NAMESPACE,
    DESTINATION_KEY,
    LB_NAMESPACE,
    METADATA_NAMESPACE,
    POOL_METADATA_KEY,
)
from warmroute.state.tokens import MAX_TOKEN_FIELDS
from warmroute.xds.local_replies import local_reply_config

LISTENER_NAME = "warmroute_ingress"
ROUTE_CONFIG_NAME = "warmroute_routes"
CONTROL_CLUSTER = "warmroute_control"
XDS_CLUSTER = "warmroute_xds"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
JSON_TO_METADATA_FILTER = "envoy.filters.http.json_to_metadata"
# Paths that answer the gateway's own health without ext_proc and without a slot.
HEALTH_PATHS = ("/health", "/healthz", "/readyz", "/livez")
ACCESS_LOG_NAME = "warmroute"


def pool_cluster_name(pool: str) -> str:
    return f"warmroute_pool_{pool}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint as xDS sees it: routable (HEALTHY) or finishing (DRAINING)."""

    address: str
    draining: bool = False


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def socket_address(host_port: str) -> address_pb2.Address:
    host, _, port = host_port.rpartition(":")
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host.strip("[]"), port_value=int(port))
    )


def _control_grpc_service() -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=CONTROL_CLUSTER)
    )


# -- listener ------------------------------------------------------------------------------


def ext_proc_filter(cfg: Config) -> ext_proc_pb2.ExternalProcessor:
    # A queued request holds its ext_proc message open until a slot frees: the message
    # timeout must outlast the longest queue wait, or Envoy fails the request first.
    timeout = _seconds(cfg.max_queue_timeout + 5.0)
    mode = processing_mode_pb2.ProcessingMode
    return ext_proc_pb2.ExternalProcessor(
        grpc_service=_control_grpc_service(),
        failure_mode_allow=cfg.routing.failure_mode_allow,
        processing_mode=mode(
            request_header_mode=mode.SEND,
            response_header_mode=mode.SKIP,
            request_body_mode=mode.NONE,
            response_body_mode=mode.NONE,
            request_trailer_mode=mode.SKIP,
            response_trailer_mode=mode.SKIP,
        ),
        message_timeout=timeout,
        max_message_timeout=timeout,
        # Lets warmroute ask for one request's body (BUFFERED) in its headers answer: only
        # pools with policy prefix_affinity hash the prompt; other requests never send it.
        allow_mode_override=True,
        # Without this Envoy silently drops our metadata and the fallback LB picks a host.
        metadata_options=ext_proc_pb2.MetadataOptions(
            receiving_namespaces=ext_proc_pb2.MetadataOptions.MetadataNamespaces(
                untyped=[LB_NAMESPACE, METADATA_NAMESPACE]
            ),
            # The body's model, read by json_to_metadata, arrives with the request headers:
            # no body crosses the gRPC stream and routing stays one round trip.
            forwarding_namespaces=ext_proc_pb2.MetadataOptions.MetadataNamespaces(
                untyped=[BODY_NAMESPACE]
            ),
        ),
        stat_prefix="warmroute",
        # warmroute unreachable (restarting, failing over): a retryable 503, not a 500.
        status_on_error=http_status_pb2.HttpStatus(
            code=http_status_pb2.StatusCode.ServiceUnavailable
        ),
    )


# Bodies the filter parses: JSON (any parameters) and curl's default for ``-d``. Anything
# else (multipart audio, binary) streams through unbuffered and must carry the model header.
_JSON_CONTENT_TYPES = r"(?i)^\s*application/(json|x-www-form-urlencoded)\s*(;.*)?$"


def json_to_metadata_filter() -> json_to_metadata_pb2.JsonToMetadata:
    """Read ``model``, ``stream``, ``max_completion_tokens`` and ``max_tokens`` from the
    JSON request body into ``warmroute.body``.

    The filter holds the request until its body is complete (bounded by the route's
    ``request_body_buffer_limit``: 413 above it), so ext_proc sees the body's model with
    the request headers and a slot is leased only once the whole request has arrived.
    """
    j = json_to_metadata_pb2.JsonToMetadata
    kv = j.KeyValuePair

    def flag(value: str) -> json_to_metadata_pb2.JsonToMetadata.KeyValuePair:
        return kv(
            metadata_namespace=BODY_NAMESPACE,
            key="body",
            value=struct_pb2.Value(string_value=value),
        )

    rules = j.MatchRules(
        rules=[
            j.Rule(
                selectors=[j.Selector(key="model")],
                on_present=kv(metadata_namespace=BODY_NAMESPACE, key="model", type=j.STRING),
                on_missing=flag("no_model"),
                on_error=flag("invalid"),
            ),
            j.Rule(
                selectors=[j.Selector(key="stream")],
                on_present=kv(metadata_namespace=BODY_NAMESPACE, key="stream", type=j.STRING),
            ),
            # The completion a request may ask for, for pools with a token budget (read
            # only there: ``warmroute.request.tokens``). Numbers stay numbers.
            *(
                j.Rule(
                    selectors=[j.Selector(key=name)],
                    on_present=kv(metadata_namespace=BODY_NAMESPACE, key=name),
                )
                for name in MAX_TOKEN_FIELDS
            ),
        ],
        allow_content_types_regex=regex_pb2.RegexMatcher(regex=_JSON_CONTENT_TYPES),
        allow_empty_content_type=True,
    )
    return j(request_rules=rules)


def access_log(cfg: Config) -> accesslog_pb2.AccessLog:
    config = als_pb2.HttpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=ACCESS_LOG_NAME,
            grpc_service=_control_grpc_service(),
            transport_api_version=config_source_pb2.ApiVersion.V3,
            # Unbuffered: the entry is the end-of-request signal that frees a slot.
            buffer_size_bytes=wrappers_pb2.UInt32Value(value=0),
            buffer_flush_interval=_seconds(0.005),
        )
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=_any(config))


def http_connection_manager(
    cfg: Config, route_config: route_pb2.RouteConfiguration | None = None
) -> hcm_pb2.HttpConnectionManager:
    """HCM with ext_proc, router and the end-of-request logger.

    With ``route_config`` None, routes come over RDS (ADS) by name.
    """
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="warmroute",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        # Treat every client as external: Envoy then regenerates x-request-id and ignores
        # client-sent x-envoy-* control headers, so a client cannot impersonate a request.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        request_headers_timeout=_seconds(cfg.envoy.request_headers_timeout_seconds),
        http_filters=[
            hcm_pb2.HttpFilter(
                name=JSON_TO_METADATA_FILTER, typed_config=_any(json_to_metadata_filter())
            ),
            hcm_pb2.HttpFilter(name=EXT_PROC_FILTER, typed_config=_any(ext_proc_filter(cfg))),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            ),
        ],
        access_log=[access_log(cfg)],
        local_reply_config=local_reply_config(cfg),
    )
    if route_config is not None:
        hcm.route_config.CopyFrom(route_config)
    else:
        hcm.rds.route_config_name = ROUTE_CONFIG_NAME
        hcm.rds.config_source.CopyFrom(ads_config_source())
    return hcm


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def listener(
    cfg: Config,
    route_config: route_pb2.RouteConfiguration | None = None,
    address: str | None = None,
) -> listener_pb2.Listener:
    """The one listener; ``address`` (default ``envoy.listen``) for a node's own setting."""
    hcm = http_connection_manager(cfg, route_config)
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=socket_address(address or cfg.envoy.listen),
        # The most a request body may hold while json_to_metadata buffers it (Envoy then
        # answers 413). Measured on Envoy 1.40: the route's and virtual host's
        # request_body_buffer_limit do not bound that filter's buffer; the listener's does.
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(
            value=cfg.routing.max_body_bytes
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(hcm),
                    )
                ]
            )
        ],
    )


# -- routes --------------------------------------------------------------------------------


def _pool_marker(pool: str, verify_body_model: bool) -> dict[str, any_pb2.Any]:
    per_route = ext_proc_pb2.ExtProcPerRoute(
        overrides=ext_proc_pb2.ExtProcOverrides(
            grpc_initial_metadata=[base_pb2.HeaderValue(key=POOL_METADATA_KEY, value=pool)]
        )
    )
    filters = {EXT_PROC_FILTER: _any(per_route)}
    if not verify_body_model:
        # The header chose the pool: do not parse the body just to cross-check it.
        off = route_components_pb2.FilterConfig(disabled=True)
        filters[JSON_TO_METADATA_FILTER] = _any(off)
    return filters


def route_configuration(cfg: Config) -> route_pb2.RouteConfiguration:
    """One route per (pool, model) on the model header; anything else reaches ext_proc
    without a pool and is answered there (400 missing model / 404 unknown model)."""
    routes = [_health_route(path) for path in HEALTH_PATHS]
    header = cfg.routing.model_header
    for pool in cfg.pools:
        action = route_components_pb2.RouteAction(
            cluster=pool_cluster_name(pool.name),
            # The lease deadline is later than this, so Envoy ends a request before its
            # lease could be reclaimed while still in use.
            timeout=_seconds(pool.max_request_seconds),
        )
        for model in pool.models:
            routes.append(
                route_components_pb2.Route(
                    name=f"{pool.name}/{model}",
                    match=route_components_pb2.RouteMatch(
                        prefix="/",
                        headers=[
                            route_components_pb2.HeaderMatcher(
                                name=header,
                                string_match=string_pb2.StringMatcher(exact=model),
                            )
                        ],
                    ),
                    route=action,
                    typed_per_filter_config=_pool_marker(pool.name, cfg.routing.verify_body_model),
                )
            )
    routes.append(
        route_components_pb2.Route(
            name="unrouted",
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=404,
                body=base_pb2.DataSource(inline_string='{"error":{"code":"unknown_model"}}\n'),
            ),
        )
    )
    vhost = route_components_pb2.VirtualHost(name="warmroute", domains=["*"], routes=routes)
    return route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME, virtual_hosts=[vhost])


def _health_route(path: str) -> route_components_pb2.Route:
    """The gateway's own health: answered by Envoy, no ext_proc call, never a slot."""
    off = ext_proc_pb2.ExtProcPerRoute(disabled=True)
    return route_components_pb2.Route(
        name=f"health{path}",
        match=route_components_pb2.RouteMatch(path=path),
        direct_response=route_components_pb2.DirectResponseAction(
            status=200, body=base_pb2.DataSource(inline_string='{"status":"ok"}\n')
        ),
        typed_per_filter_config={EXT_PROC_FILTER: _any(off)},
    )


# -- clusters and endpoints ----------------------------------------------------------------


def _override_host_policy() -> cluster_pb2.LoadBalancingPolicy:
    source = override_host_pb2.OverrideHost.OverrideHostSource(
        metadata=_metadata_key(LB_NAMESPACE, DESTINATION_KEY)
    )
    fallback = cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name="envoy.load_balancing_policies.least_request",
                    typed_config=_any(least_request_pb2.LeastRequest()),
                )
            )
        ]
    )
    override = override_host_pb2.OverrideHost(
        override_host_sources=[source], fallback_policy=fallback
    )
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name="envoy.load_balancing_policies.override_host",
                    typed_config=_any(override),
                )
            )
        ]
    )


def _metadata_key(namespace: str, key: str) -> metadata_pb2.MetadataKey:
    return metadata_pb2.MetadataKey(
        key=namespace, path=[metadata_pb2.MetadataKey.PathSegment(key=key)]
    )


def _big_circuit_breakers(limit: int) -> circuit_breaker_pb2.CircuitBreakers:
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=wrappers_pb2.UInt32Value(value=limit),
        max_pending_requests=wrappers_pb2.UInt32Value(value=limit),
        max_requests=wrappers_pb2.UInt32Value(value=limit),
        max_retries=wrappers_pb2.UInt32Value(value=3),
    )
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[t])


def load_assignment(pool: str, endpoints: Iterable[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    healthy = health_check_pb2.HealthStatus.HEALTHY
    draining = health_check_pb2.HealthStatus.DRAINING
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(e.address)),
            health_status=draining if e.draining else healthy,
        )
        for e in endpoints
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=pool_cluster_name(pool),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


def pool_cluster(
    pool: PoolConfig, static_endpoints: Sequence[Endpoint] | None = None
) -> cluster_pb2.Cluster:
    """The cluster of one pool. With ``static_endpoints`` it is STATIC, else EDS over ADS."""
    cluster = cluster_pb2.Cluster(
        name=pool_cluster_name(pool.name),
        connect_timeout=_seconds(2.0),
        load_balancing_policy=_override_host_policy(),
        # Never route to a non-healthy host just because few are healthy.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(value=0.0)
        ),
        # Slots, not Envoy, bound concurrency: Envoy's 1024 default must never bind first.
        circuit_breakers=_big_circuit_breakers(1_000_000),
    )
    if static_endpoints is not None:
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(load_assignment(pool.name, static_endpoints))
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    return cluster


def control_cluster(cfg: Config) -> cluster_pb2.Cluster:
    """Envoy's gRPC connection to warmroute for ext_proc and the access log (and ADS,
    unless ``control.advertise_xds`` names another address)."""
    return _grpc_cluster(CONTROL_CLUSTER, cfg.control.advertise or cfg.control.grpc, cfg)


def xds_cluster(cfg: Config) -> cluster_pb2.Cluster | None:
    """A separate cluster for ADS when ``control.advertise_xds`` is set."""
    if cfg.control.advertise_xds is None:
        return None
    return _grpc_cluster(XDS_CLUSTER, cfg.control.advertise_xds, cfg)


def _grpc_cluster(name: str, address: str, cfg: Config) -> cluster_pb2.Cluster:
    http2 = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                # Every request in flight (or queued) holds one ext_proc stream.
                max_concurrent_streams=wrappers_pb2.UInt32Value(value=1 << 20)
            )
        )
    )
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS  # e.g. a Kubernetes Service name
    cluster = cluster_pb2.Cluster(
        name=name,
        type=kind,
        connect_timeout=_seconds(1.0),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(http2)
        },
        circuit_breakers=_big_circuit_breakers(1_000_000),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=socket_address(address)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if kind == cluster_pb2.Cluster.STRICT_DNS:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    if cfg.control.tls is not None:
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.Pack(_upstream_tls(cfg.control.tls.envoy))
    return cluster


def _upstream_tls(tls: EnvoyClientTls) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext(sni=tls.server_name or "")
    common = ctx.common_tls_context
    common.alpn_protocols.append("h2")  # gRPC
    common.validation_context.trusted_ca.filename = tls.ca_file
    if tls.server_name:
        san = common.validation_context.match_typed_subject_alt_names.add()
        san.san_type = common_pb2.SubjectAltNameMatcher.DNS
        san.matcher.exact = tls.server_name
    if tls.cert_file and tls.key_file:
        cert = common.tls_certificates.add()
        cert.certificate_chain.filename = tls.cert_file
        cert.private_key.filename = tls.key_file
    return ctx
