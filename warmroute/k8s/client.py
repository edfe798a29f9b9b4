"""Build the official client's ApiClient from warmroute's config."""

from __future__ import annotations

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from warmroute.config import KubernetesConfig


def api_client(cfg: KubernetesConfig) -> k8s.ApiClient:
    """``api_url`` (no credentials), else a kubeconfig file, else the in-cluster config."""
    if cfg.api_url:
        conf = k8s.Configuration()
        conf.host = cfg.api_url
        return k8s.ApiClient(conf)
    if cfg.kubeconfig:
        return k8s_config.new_client_from_config(config_file=cfg.kubeconfig)
    try:
        k8s_config.load_incluster_config()
        return k8s.ApiClient()
    except k8s_config.ConfigException:
        return k8s_config.new_client_from_config()
