"""YAML config validated into typed, frozen objects.

``load(path)`` raises ``ConfigError`` whose message names the file, each bad key's path
(``pools[0].queue.max_waiting``), its line, and what was expected. Nothing in the running
process changes until a config has fully validated.

This package's names are its whole surface (``__all__``, checked by a test); its modules
are private, one per concern:

- ``_loading``: ``load``, ``parse``, ``default``, ``example``, ``enable_epp``; YAML lines and
  error messages
- ``_root``: ``Config``, one field per top-level key, and the checks across sections
- ``_envoy``, ``_control``, ``_routing``, ``_xds``, ``_epp``: the top-level key of that name
- ``_kubernetes``: the API client and leader election, and a pool's Pods or InferencePool
- ``_pools``: a pool; its sections in ``_admission`` (queue, priority, tokens),
  ``_selection`` (affinity, outlier detection) and ``_replicas`` (listed, simulated,
  probe, metrics, autoscale)
- ``_base``: the strict base model, address and name types, located errors
"""

from warmroute.config._admission import (
    BandConfig,
    FairnessConfig,
    PriorityConfig,
    QueueConfig,
    TokensConfig,
)
from warmroute.config._base import HeaderName, HostPort, IpPort, Name
from warmroute.config._control import ControlConfig, EnvoyClientTls, GrpcTlsConfig
from warmroute.config._envoy import EnvoyConfig, EnvoyNodeConfig, NodeAddresses
from warmroute.config._epp import EppConfig, EppTlsFiles
from warmroute.config._kubernetes import (
    InferencePoolRef,
    KubernetesConfig,
    KubernetesPoolConfig,
    LeaderElectionConfig,
    ScaleTarget,
)
from warmroute.config._loading import default, enable_epp, example, load, parse
from warmroute.config._pools import PoolConfig
from warmroute.config._replicas import (
    AutoscaleConfig,
    ProbeConfig,
    ReplicaConfig,
    ScrapeConfig,
    SimulateConfig,
    Slots,
)
from warmroute.config._root import Config
from warmroute.config._routing import RoutingConfig
from warmroute.config._selection import AffinityConfig, OutlierConfig
from warmroute.config._xds import RolloutConfig, XdsConfig

__all__ = [
    "AffinityConfig",
    "AutoscaleConfig",
    "BandConfig",
    "Config",
    "ControlConfig",
    "EnvoyClientTls",
    "EnvoyConfig",
    "EnvoyNodeConfig",
    "EppConfig",
    "EppTlsFiles",
    "FairnessConfig",
    "GrpcTlsConfig",
    "HeaderName",
    "HostPort",
    "InferencePoolRef",
    "IpPort",
    "KubernetesConfig",
    "KubernetesPoolConfig",
    "LeaderElectionConfig",
    "Name",
    "NodeAddresses",
    "OutlierConfig",
    "PoolConfig",
    "PriorityConfig",
    "ProbeConfig",
    "QueueConfig",
    "ReplicaConfig",
    "RolloutConfig",
    "RoutingConfig",
    "ScaleTarget",
    "ScrapeConfig",
    "SimulateConfig",
    "Slots",
    "TokensConfig",
    "XdsConfig",
    "default",
    "enable_epp",
    "example",
    "load",
    "parse",
]
