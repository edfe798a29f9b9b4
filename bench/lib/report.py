"""Results files: a markdown page per scenario (machine, command, tables) and PNG plots.

matplotlib is imported only inside :func:`plot_cdfs`, so the rest works without it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.lib.util import RESULTS


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    """What ``nproc`` prints: CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def envoy_version() -> str:
    from warmroute.envoy_process import find_envoy

    try:
        out = subprocess.run(
            [find_envoy(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    found = re.search(r"version: \w+/([\w.-]+)/", out)
    return found.group(1) if found else "unknown"


def _cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq
    steal ...), in clock ticks; empty if unavailable."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


_BEGIN: dict[str, object] = {}


def begin(smoke: bool = False, left_out: Mapping[str, str] | None = None) -> None:
    """Mark the start of a run: header() then reports the machine's load over it, and for a
    ``--smoke`` run says so and names the parts ``left_out`` (part -> why)."""
    _BEGIN.update(cpu=_cpu_times(), load=os.getloadavg()[0], smoke=smoke)
    _BEGIN["left_out"] = dict(left_out or {})


def _load_over_run() -> str:
    """Load average at start and end, and how busy and how stolen (VM) the CPUs were."""
    if not _BEGIN:
        return ""
    start, end = _BEGIN["cpu"], _cpu_times()
    text = f"load average {_BEGIN['load']:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    if isinstance(start, list) and len(start) >= 8 and len(end) >= 8:
        delta = [b - a for a, b in zip(start, end, strict=False)]
        total = sum(delta[:8]) or 1
        busy = 1 - (delta[3] + delta[4]) / total
        text += f"; all CPUs {busy:.0%} busy over the run, {delta[7] / total:.1%} steal"
    return text


def command_line() -> str:
    """The command that produced this run, as typed (``python bench/run.py ...``)."""
    return "python " + shlex.join(sys.argv)


def header(title: str, seed: int | None = None) -> list[str]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = [
        f"# {title}",
        "",
        table(
            ["", ""],
            [
                ["date", now.isoformat().replace("+00:00", "Z")],
                ["machine", f"{nproc()} CPUs (`nproc`), {cpu_model()}, Linux {platform.release()}"],
                ["software", f"Python {platform.python_version()}, Envoy {envoy_version()}"],
                ["command", f"`{command_line()}`"],
                *([["machine load", load]] if (load := _load_over_run()) else []),
                *([["seed", str(seed)]] if seed is not None else []),
                *_smoke_rows(),
            ],
        ),
        "",
    ]
    return lines


def _smoke_rows() -> list[list[str]]:
    if not _BEGIN.get("smoke"):
        return []
    rows = [["smoke run", "**`--smoke`: tiny sizes, the numbers mean nothing**"]]
    left = _BEGIN.get("left_out")
    if isinstance(left, dict):
        rows += [[f"left out: {part}", why] for part, why in left.items()]
    return rows


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    def number(v: object) -> bool:
        try:
            float(str(v).replace(",", "").rstrip("x%"))
        except ValueError:
            return False
        return True

    def numeric(col: int) -> bool:
        vals = [r[col] for r in rows if str(r[col]) not in ("", "—")]
        return bool(vals) and all(number(v) for v in vals)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write(scenario: str, lines: Sequence[str], out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{scenario}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def plot_cdfs(
    path: Path,
    panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
    *,
    xlabel: str,
    ylabel: str = "fraction of requests answered OK within x",
    logx: bool = True,
    suptitle: str = "",
    totals: Mapping[str, Mapping[str, int]] | None = None,
) -> Path:
    """One CDF panel per ``(title, {label: values})`` (up to 3 per row); saved as PNG.

    With ``totals[title][label]`` (requests sent), y is the fraction of *all* requests
    answered successfully within x, so a series with failures levels off below 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: int) -> str:
        lead = f"{v:.0e}"[0]
        return f"{v:g}" if lead in "25" else ""

    cols = min(len(panels), 3 if len(panels) != 4 else 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for label, values in series.items():
            if not values:
                continue
            xs = sorted(values)
            total = (totals or {}).get(title, {}).get(label, len(xs))
            ys = [(i + 1) / total for i in range(len(xs))]
            style = {"color": "black", "linestyle": "--"} if label.startswith("ideal") else {}
            n = f"{len(xs)}/{total} ok" if total != len(xs) else f"n={len(xs)}"
            ax.step(xs, ys, where="post", label=f"{label} ({n})", linewidth=1.4, **style)
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(minor))
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
