"""Run one simulated replica until SIGINT/SIGTERM: ``python -m warmroute.sim --port 9001``.

:func:`main` is the entry point; ``warmroute sim`` builds its subcommand with
:func:`add_arguments` and runs it with :func:`build` and :func:`run`, so both take the same
options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
from collections.abc import Callable

from warmroute.children import adopt_parent_death
from warmroute.sim.lora import LoraConfig, parse_module
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import DISTRIBUTIONS, TokenTiming, parse_service_time

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Simulated GPU model server: fixed slots and no queue, a cold start (/health 503 while "
    "loading), vLLM's /metrics, the OpenAI API (/v1/completions, /v1/chat/completions, "
    "/v1/responses, with stream: true as SSE; /v1/embeddings, /v1/models), Anthropic's "
    "/v1/messages, and LoRA adapters as vLLM serves them (--enable-lora). A request with "
    "max_tokens takes ttft + max_tokens x per-token; one without, a sample of the "
    "service-time distribution."
)
_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _number(
    low: float, *, above: bool = False, kind: Callable[[str], float] = float
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number >= ``low`` (> ``low`` if ``above``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (above and value == low):
            bound = f"> {low}" if above else f">= {low}"
            noun = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The replica's options (every one has a default)."""
    timing = TokenTiming()
    add = parser.add_argument
    # fmt: off
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=_number(0, kind=int), default=8000, metavar="N",
        help="port to listen on, 0 for any free one (default %(default)s)")
    add("--slots", type=_number(1, kind=int), default=1, metavar="N",
        help="concurrent requests; one more is refused with 503 (default %(default)s)")
    add("--load-seconds", type=_number(0), default=0.0, metavar="S",
        help="cold start: /health answers 503 this long (default %(default)s)")
    add("--distribution", choices=DISTRIBUTIONS, default="fixed",
        help="service time of a request without max_tokens (default %(default)s)")
    add("--median-ms", type=_number(0, above=True), default=100.0, metavar="MS",
        help="its median (default %(default)s)")
    add("--sigma", type=_number(0), default=0.0, metavar="X",
        help="lognormal only: standard deviation of its log (default %(default)s)")
    add("--seed", type=int, default=None, metavar="N", help="random seed (default: random)")
    add("--model", "--models", dest="models", nargs="+", action="extend", metavar="NAME",
        help="served model name(s), repeatable; the first is the default (default sim-model)")
    add("--ttft-ms", type=_number(0), default=timing.ttft_ms, metavar="MS",
        help="with max_tokens: time to the first token (default %(default)s)")
    add("--per-token-ms", type=_number(0), default=timing.per_token_ms, metavar="MS",
        help="with max_tokens: time per token (default %(default)s)")
    add("--fail-status", type=_number(500, kind=int), default=None, metavar="CODE",
        help="answer every inference request with this 5xx status at once while /health "
             "stays 200 (a broken server; POST /admin/fail changes it)")
    lora = parser.add_argument_group(
        "LoRA adapters (as vLLM 0.32; off unless --enable-lora)")
    lora.add_argument("--enable-lora", action="store_true",
        help="serve LoRA adapters on the first model; a request must then name a served "
             "model or a known adapter (else 404, as vLLM)")
    lora.add_argument("--max-loras", type=_number(1, kind=int), default=1, metavar="N",
        help="distinct adapters in the running batch; requests for another wait "
             "(default %(default)s)")
    lora.add_argument("--max-cpu-loras", type=_number(1, kind=int), default=None, metavar="N",
        help="adapters kept loaded, least recently used evicted (default: --max-loras)")
    lora.add_argument("--lora-modules", nargs="+", action="extend", default=[],
        metavar="NAME=PATH", help="adapters known and loaded from the start (or JSON "
        '{"name": ..., "path": ...}), repeatable')
    lora.add_argument("--lora-load-ms", type=_number(0), default=100.0, metavar="MS",
        help="time to load one adapter: a load request, or a request whose adapter was "
             "evicted (default %(default)s)")
    lora.add_argument("--allow-runtime-lora-updating", action="store_true",
        help="answer POST /v1/load_lora_adapter and /v1/unload_lora_adapter (404 otherwise; "
             "also on with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1|true, as vLLM)")
    lora.add_argument("--lora-check-paths", action="store_true",
        help="the load endpoint refuses (404, as vLLM) a lora_path that is not on disk "
             "(default: every path loads)")
    add("--log-level", type=str.upper, choices=_LEVELS, default=None,
        help="DEBUG logs one line per request (default INFO)")
    # fmt: on


def runtime_lora_updating_env() -> bool:
    """vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, read as vLLM reads it."""
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")


def lora_config(args: argparse.Namespace) -> LoraConfig | None:
    """The LoRA settings of ``args`` (None without ``--enable-lora``). Raises
    :class:`ValueError` for LoRA options without ``--enable-lora`` or a bad module."""
    if not getattr(args, "enable_lora", False):
        if getattr(args, "lora_modules", None):
            raise ValueError("--lora-modules needs --enable-lora")
        return None
    return LoraConfig(
        max_loras=int(args.max_loras),
        max_cpu_loras=None if args.max_cpu_loras is None else int(args.max_cpu_loras),
        load_s=args.lora_load_ms / 1000,
        modules=tuple(parse_module(m) for m in args.lora_modules),
        runtime_updating=args.allow_runtime_lora_updating or runtime_lora_updating_env(),
    )


def build(args: argparse.Namespace) -> SimReplica:
    """The replica ``args`` (from a parser with :func:`add_arguments`) describe. Raises
    :class:`ValueError` for an option the parser's checks let through (an empty model name,
    a bad LoRA module, ``--max-cpu-loras`` under ``--max-loras``)."""
    service = parse_service_time(args.distribution, args.median_ms, args.sigma)
    timing = TokenTiming(args.ttft_ms, args.per_token_ms)
    models = args.models or ["sim-model"]
    lora = lora_config(args)
    exists = os.path.exists if getattr(args, "lora_check_paths", False) else None
    replica = SimReplica(
        args.slots, args.load_seconds, service, args.seed, models, timing,
        lora=lora, lora_path_exists=exists,
    )  # fmt: skip
    if getattr(args, "fail_status", None) is not None:
        replica.set_failing(int(args.fail_status))  # ValueError above 599: a usage error
    return replica


def run(replica: SimReplica, args: argparse.Namespace) -> None:
    """Serve ``replica`` on ``--host``/``--port`` until SIGINT/SIGTERM, logging at
    ``--log-level`` (INFO unless set). Raises :class:`OSError` if the bind fails."""
    adopt_parent_death()  # started by `warmroute up` or the local scaler: die with it
    logging.basicConfig(
        level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )  # a no-op under `warmroute sim`, whose logging is already set up
    if args.log_level:
        logging.getLogger().setLevel(args.log_level)
    asyncio.run(_serve(replica, args.host, args.port))


async def _serve(replica: SimReplica, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop the replica."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await replica.start(host, port)
        await stopping.wait()
        logger.info("sim replica %s: signal received, stopping", replica.address)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await replica.stop()


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), run one replica until SIGINT/SIGTERM.

    Bad arguments exit with status 2 and a usage message, as argparse does; a failed bind
    raises :class:`OSError`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        replica = build(args)
    except ValueError as exc:
        parser.error(str(exc))
    run(replica, args)


if __name__ == "__main__":
    main(prog="python -m warmroute.sim")
