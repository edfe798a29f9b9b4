"""The converge scenario's results: every label's run kept in ``converge.json``, one page
and one bar chart with the labels side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.lib import report
from bench.lib.stats import fmt_ms
from bench.scenarios.converge_plan import (
    ENDPOINT_ONLY,
    JITTER,
    KINDS,
    POLL,
    PROBE_INTERVAL,
    Sample,
    summary,
)

DATA = "converge.json"


def run_record(samples: Sequence[Sample], soak: float) -> dict[str, Any]:
    """One soak setting's samples as stored: per kind, seconds to every Envoy and to the
    first, and how many changes never reached every Envoy."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(s.kind for s in samples):
        mine = [s for s in samples if s.kind == kind]
        out[kind] = {
            "all": [s.all for s in mine if s.all is not None],
            "first": [min(t for t in s.envoys if t is not None) for s in mine
                      if any(t is not None for t in s.envoys)],
            "timeouts": sum(s.all is None for s in mine),
        }  # fmt: skip
    return {"soak_seconds": soak, "kinds": out}


def _cell(times: Sequence[float]) -> str:
    p50, p90, top = (v * 1e3 for v in summary(times))
    return f"{fmt_ms(p50, 0)} / {fmt_ms(p90, 0)} / {fmt_ms(top, 0)}"


def write_report(data: Mapping[str, Any], out_dir: Path) -> Path:
    runs: Mapping[str, Any] = data["runs"]
    labels = sorted(runs, key=lambda lb: (lb != "before", lb))
    lines = report.header("Config write → every Envoy ACKed, per kind of change (issue 13)")
    lines += [
        "Control plane (`python -m warmroute serve -c FILE`, run from the source tree of each "
        "label), two real Envoys on delta ADS (node `converge-a` is the rollout's only "
        "canary, `converge-b` follows on promotion), six simulated replicas "
        "(`warmroute sim`, listed under `replicas:`; probe every "
        f"{PROBE_INTERVAL * 1e3:g} ms). Each change rewrites the config file atomically "
        "(temp file + rename, like a ConfigMap symlink swap); t0 is taken just before the "
        f"rename. Both Envoys' admin (`/clusters`, `/config_dump?resource="
        f"dynamic_route_configs`) are polled every ~{POLL * 1e3:g} ms until each shows the "
        "change: the new pool's cluster with its replica and its route; the route's new "
        "timeout; the moved replica HEALTHY in the other pool's cluster and gone from its "
        "old one; the added replica in the cluster; the alias's route; the removed pool's "
        'cluster and routes gone. Each change is then undone (timed too: "remove pool" is '
        'the undoing of "add pool"); the next waits for the rollout to be stable '
        f"(control admin `/xds`), then a random 0-{JITTER:g} s, so writes do not fall in step "
        "with the control plane's timers. Kinds are interleaved round by round.",
        "",
        "Cells are **p50 / p90 / max ms** from the rename to *every* Envoy showing the change; "
        "the first Envoy (the canary, for a staged config change) alone is its own column; "
        "raw seconds per change are in `converge.json`. Endpoint-only kinds (no cluster, route "
        f"or listener change): {', '.join(ENDPOINT_ONLY)}.",
        "",
        "**Noise:** 2 CPUs shared with other engineers' builds and tests while this ran; "
        "read differences of a few tens of ms as noise, differences of a second as real.",
        "",
        "## Runs",
        "",
        "Each label is one source tree, e.g. `git worktree add /tmp/wr-before eefb576` then "
        "`python bench/run.py converge --label before --warmroute-src /tmp/wr-before`; a run "
        "replaces only its own label's results in `converge.json`.",
        "",
        report.table(
            ["label", "source tree", "commit", "date", "rounds", "load avg at end", "command"],
            [
                [
                    lb,
                    f"`{runs[lb]['src']}`",
                    runs[lb]["commit"],
                    runs[lb]["date"],
                    runs[lb]["reps"],
                    runs[lb].get("load", "—"),
                    f"`{runs[lb]['command']}`",
                ]
                for lb in labels
            ],
        ),
        "",
    ]
    soaks = sorted({r["soak_seconds"] for lb in labels for r in runs[lb]["results"]}, reverse=True)
    for soak in soaks:
        lines += [f"## Soak {soak:g} s", ""]
        rows = []
        for kind in KINDS:
            row: list[object] = [kind + (" (endpoint-only)" if kind in ENDPOINT_ONLY else "")]
            for lb in labels:
                rec = next((r for r in runs[lb]["results"] if r["soak_seconds"] == soak), None)
                got = rec["kinds"].get(kind) if rec else None
                if got is None:
                    row += ["—", "—"]
                    continue
                lost = f" ({got['timeouts']} never)" if got["timeouts"] else ""
                row += [_cell(got["all"]) + lost, fmt_ms(summary(got["first"])[0] * 1e3, 0)]
            rows.append(row)
        heads = [(f"{lb}: every Envoy, p50 / p90 / max ms", f"{lb}: first Envoy, p50 ms")
                 for lb in labels]  # fmt: skip
        lines += [report.table(["kind", *(h for pair in heads for h in pair)], rows)]
        lines.append("")
    png = out_dir / "converge.png"
    try:
        plot(png, runs, labels, soaks)
        lines += [f"![config write to every Envoy, per kind]({png.name})", ""]
    except ImportError:
        lines += ["(no plot: matplotlib is not installed; run `bash bench/setup.sh`)", ""]
    return report.write("converge", lines, out_dir)


def plot(png: Path, runs: Mapping[str, Any], labels: Sequence[str], soaks: Sequence[float]) -> None:
    """One panel per soak setting: per kind, a bar per label at p50, whiskers to p90, a dot
    at the max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(soaks), figsize=(7.5 * len(soaks), 4.6), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for ax, soak in zip(axes.flat, soaks, strict=True):
        for j, lb in enumerate(labels):
            rec = next((r for r in runs[lb]["results"] if r["soak_seconds"] == soak), None)
            xs, p50s, errs, tops = [], [], [], []
            for i, kind in enumerate(KINDS):
                got = rec["kinds"].get(kind) if rec else None
                if not got or not got["all"]:
                    continue
                p50, p90, top = (v * 1e3 for v in summary(got["all"]))
                xs.append(i - 0.4 + width * (j + 0.5))
                p50s.append(p50)
                errs.append(p90 - p50)
                tops.append(top)
            bars = ax.bar(xs, p50s, width, yerr=[[0] * len(errs), errs], capsize=3, label=lb)
            ax.plot(xs, tops, "o", color=bars.patches[0].get_facecolor() if bars.patches
                    else None, markersize=4)  # fmt: skip
        ax.set_xticks(range(len(KINDS)))
        ax.set_xticklabels([k.replace(" ", "\n", 1) for k in KINDS], fontsize=8)
        ax.set_ylabel("ms, config rename → every Envoy shows it")
        ax.set_title(f"soak {soak:g} s (bar p50, whisker p90, dot max)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def save(out_dir: Path, label: str, run: Mapping[str, Any]) -> Path:
    """Store this run under ``label`` beside the others' and rewrite the page."""
    path = out_dir / DATA
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["runs"][label] = run
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return write_report(data, out_dir)
