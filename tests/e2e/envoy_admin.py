"""Read what a real Envoy has, from its own admin endpoint."""

from __future__ import annotations

from typing import Any

import aiohttp


async def get_json(admin: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{admin}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        r.raise_for_status()
        return await r.json(content_type=None)


async def hosts(admin: str, cluster: str) -> dict[str, str]:
    """address -> EDS health status ('HEALTHY', 'DRAINING', ...) of one cluster's hosts."""
    data = await get_json(admin, "/clusters?format=json")
    out: dict[str, str] = {}
    for c in data.get("cluster_statuses", []):
        if c["name"] != cluster:
            continue
        for h in c.get("host_statuses", []):
            sa = h["address"]["socket_address"]
            out[f"{sa['address']}:{sa['port_value']}"] = h["health_status"].get(
                "eds_health_status", "HEALTHY"
            )
    return out


async def dynamic_names(admin: str) -> dict[str, list[str]]:
    """Names of the listeners, clusters and route configs Envoy got over xDS."""
    data = await get_json(admin, "/config_dump")
    out: dict[str, list[str]] = {"listeners": [], "clusters": [], "routes": []}
    for cfg in data["configs"]:
        kind = cfg["@type"].rsplit(".", 1)[-1]
        if kind == "ListenersConfigDump":
            for item in cfg.get("dynamic_listeners", []):
                if "active_state" in item:
                    out["listeners"].append(item["name"])
        elif kind == "ClustersConfigDump":
            for item in cfg.get("dynamic_active_clusters", []):
                out["clusters"].append(item["cluster"]["name"])
        elif kind == "RoutesConfigDump":
            for item in cfg.get("dynamic_route_configs", []):
                out["routes"].append(item["route_config"]["name"])
    return out


async def route_models(admin: str) -> set[str]:
    """Model header values the active routes match."""
    data = await get_json(admin, "/config_dump")
    models: set[str] = set()
    for cfg in data["configs"]:
        if cfg["@type"].endswith("RoutesConfigDump"):
            for item in cfg.get("dynamic_route_configs", []):
                for vh in item["route_config"].get("virtual_hosts", []):
                    for r in vh.get("routes", []):
                        for h in r.get("match", {}).get("headers", []):
                            models.add(h.get("string_match", {}).get("exact", ""))
    return models
