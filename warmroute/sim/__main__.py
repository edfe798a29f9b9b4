"""Run one simulated replica until SIGINT/SIGTERM: ``python -m warmroute.sim --port 9001``.

:func:`main` is the entry point, reusable by the ``warmroute`` CLI with its own ``argv``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from warmroute.children import adopt_parent_death
from warmroute.sim.replica import SimReplica
from warmroute.sim.service_time import DISTRIBUTIONS, parse_service_time

logger = logging.getLogger(__name__)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulated GPU model server: fixed slots, no queue, a cold start, "
        "vLLM-style /metrics.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port, 0 for any (%(default)s)")
    parser.add_argument("--slots", type=int, default=1, help="concurrent requests (%(default)s)")
    parser.add_argument(
        "--load-seconds", type=float, default=0.0, help="cold start before warm (%(default)s)"
    )
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="fixed")
    parser.add_argument("--median-ms", type=float, default=100.0, help="(%(default)s)")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal only (%(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (random if unset)")
    parser.add_argument("--model", default="sim-model", help="model name (%(default)s)")
    parser.add_argument(
        "--log-level", type=str.upper, default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


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
    raises :class:`OSError`. Configures logging only if the root logger has no handler yet.
    """
    adopt_parent_death()  # started by `warmroute up` or the local scaler: die with it
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        service = parse_service_time(args.distribution, args.median_ms, args.sigma)
        replica = SimReplica(args.slots, args.load_seconds, service, args.seed, args.model)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(replica, args.host, args.port))


if __name__ == "__main__":
    main(prog="python -m warmroute.sim")
