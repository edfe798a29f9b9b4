"""Human-readable tables of the registry, for ``warmroute up`` and ``warmroute status``."""

from __future__ import annotations

from typing import Any


def render(state: dict[str, Any]) -> str:
    """Render a ``RegistryView.to_json()`` document (local or fetched from /state)."""
    lines: list[str] = []
    for pool in state["pools"]:
        replicas = pool["replicas"]
        # Busy per server (every pool's leases plus external load); older servers sent
        # only this pool's leases.
        used = sum(r.get("busy", r["in_flight"]) for r in replicas)
        slots = sum(r["slots"] for r in replicas if r["phase"] == "warm")
        lines.append(
            f"pool {pool['name']}  models: {', '.join(pool['models'])}  "
            f"busy {used}/{slots} warm slots  waiting {pool['waiting']}/{pool['max_waiting']}  "
            f"served {pool['granted_immediately'] + pool['granted_after_wait']} "
            f"(waited {pool['granted_after_wait']})  timed out {pool['waits_timed_out']}  "
            f"queue full {pool['rejected_queue_full']}  expired {pool['expired']}"
        )
        if budgets := [r for r in replicas if r.get("tokens") is not None]:
            # Pools with ``tokens:``: reserved by this pool / every pool / the budgets.
            lines.append(
                f"  tokens reserved {sum(r.get('tokens_leased', 0) for r in budgets)} "
                f"(all pools {sum(r.get('tokens_busy', 0) for r in budgets)}) of "
                f"{sum(r['tokens'] for r in budgets if r['phase'] == 'warm')} on warm replicas"
            )
        if learned := _forecast(pool.get("forecast")):
            lines.append(f"  {learned}")
        lines.append(f"  {'REPLICA':<24}{'PHASE':<10}{'SLOTS':<14}{'LEASED':>8}")
        for r in replicas:
            # '#' this pool's leases, '+' another pool's on the same server (a moved replica).
            mine = r["in_flight"]
            others = max(0, r.get("busy", mine) - mine - r["external"])
            free = r["slots"] - mine - others - r["external"]
            bar = "#" * mine + "+" * others + "." * max(0, free)
            if r.get("fenced") is not None:
                extra = f" fenced {r['fenced']}"  # held until its load is known
            elif r["external"]:
                extra = f" +{r['external']} ext"  # busy with requests nobody leased
            else:
                extra = ""
            lines.append(
                f"  {r['address']:<24}{r['phase']:<10}{bar[:12] + extra:<14}{r['leased_total']:>8}"
            )
        if not replicas:
            lines.append("  (no replicas)")
    lines.append(f"leases in flight: {state['leases']}")
    if fence := _fence(state.get("fence")):
        lines.append(fence)
    return "\n".join(lines)


def _fence(f: dict[str, Any] | None) -> str:
    """The start's fence while it holds slots (``warmroute.state.inflight``)."""
    if not f or not f.get("held"):
        return ""
    return (
        f"fence ({f['reason']}): {len(f['held'])} replica(s) held until their load is known "
        f"(Envoys reporting: {f.get('reporting_envoys', 0)})"
    )


def _forecast(f: dict[str, Any] | None) -> str:
    """What the pool learned (service, cold start) and its last wait-or-scale decision;
    empty before anything was measured (and from servers that send no forecast)."""
    if not f:
        return ""
    parts = []
    if f.get("service_mean") is not None:
        p90 = f.get("service_p90") or 0.0
        parts.append(
            f"service mean {f['service_mean'] * 1e3:.0f} ms p90 {p90 * 1e3:.0f} ms "
            f"({f.get('service_samples', 0)} requests)"
        )
    if f.get("cold_start") is not None:
        parts.append(f"cold start {f['cold_start']:.1f} s ({f.get('cold_starts', 0)} measured)")
    if f.get("last_reason"):
        parts.append(f"last decision: +{f.get('last_scale_up', 0)} ({f['last_reason']})")
    return "learned: " + "; ".join(parts) if parts else ""
