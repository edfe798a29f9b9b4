"""The ``warmroute`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request

from warmroute import config as config_mod
from warmroute import view
from warmroute.errors import ConfigError


def _load(path: str | None) -> config_mod.Config:
    return config_mod.load(path) if path else config_mod.default()


def _cmd_up(args: argparse.Namespace) -> int:
    from warmroute import up

    return asyncio.run(
        up.run(
            _load(args.config),
            config_path=args.config,
            live=not args.quiet,
            duration=args.duration,
        )
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from warmroute.server import ControlPlane

    cfg = _load(args.config)
    if args.epp:
        cfg = config_mod.enable_epp(cfg, args.config or "<built-in demo config>")

    async def serve() -> None:
        plane = ControlPlane(cfg, config_path=args.config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(plane.reload_from_file()))
        await plane.start()
        try:
            await stop.wait()
        finally:
            await plane.stop()

    asyncio.run(serve())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    url = f"http://{args.admin}/state"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            state = json.load(resp)
    except (urllib.error.URLError, OSError) as exc:
        print(f"warmroute status: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(state, indent=2) if args.json else view.render(state))
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from warmroute.xds.bootstrap import ads_bootstrap, static_bootstrap, to_json, to_yaml

    cfg = _load(args.config)
    if args.static:
        boot = static_bootstrap(cfg, node_id=args.node_id, cluster=args.node_cluster)
    else:
        boot = ads_bootstrap(
            cfg, node_id=args.node_id, variant=args.variant, cluster=args.node_cluster
        )
    print(to_json(boot) if args.format == "json" else to_yaml(boot), end="")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.action == "example":
        print(config_mod.example(), end="")
        return 0
    cfg = config_mod.load(args.file)
    print(f"{args.file}: valid ({len(cfg.pools)} pools)")
    return 0


def _faults(text: str) -> tuple[str, ...]:
    from warmroute.soak import FAULTS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAULTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"expected a comma list out of: {', '.join(FAULTS)}"
        )
    return names


def _cmd_soak(args: argparse.Namespace) -> int:
    from warmroute.soak import soak

    return asyncio.run(
        soak(args.duration, args.replicas, args.clients, args.seed, faults=args.faults)
    )


def _cmd_sim(args: argparse.Namespace) -> int:
    from warmroute.sim.__main__ import build, run

    try:
        replica = build(args)
    except ValueError as exc:
        print(f"warmroute sim: error: {exc}", file=sys.stderr)
        return 2
    run(replica, args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmroute",
        description="Route every AI inference request through Envoy to a free, warm replica.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging: -v INFO, -vv DEBUG, -vvv also the file-watching library's own "
        "lines (serve and sim log INFO without -v)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="run replicas (simulated), the control plane and Envoy")
    p.add_argument("-c", "--config", help="YAML config (default: built-in demo)")
    p.add_argument("-q", "--quiet", action="store_true", help="no live replica table")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("serve", help="run only the control plane (your own Envoy)")
    p.add_argument("-c", "--config", help="YAML config (default: built-in demo)")
    p.add_argument(
        "--epp",
        action="store_true",
        help="be the endpoint picker (EPP) of a gateway-owned Envoy for one pool "
        "(Gateway API Inference Extension); see the `epp:` config section",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("status", help="show replicas, slots and queues of a running instance")
    p.add_argument("--admin", default="127.0.0.1:18001", help="admin address (host:port)")
    p.add_argument("--json", action="store_true", help="raw JSON from /state")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "bootstrap", help="print the minimal Envoy bootstrap (ADS pointing at warmroute)"
    )
    p.add_argument("-c", "--config", help="YAML config (default: built-in demo)")
    p.add_argument("--node-id", default="warmroute-envoy", help="this Envoy's node id")
    p.add_argument(
        "--node-cluster",
        default="warmroute",
        help="this Envoy's node cluster (e.g. its zone): picks its envoy.nodes entry",
    )
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument(
        "--variant", choices=["sotw", "delta"], help="ADS variant (default: xds.variant)"
    )
    p.add_argument(
        "--static", action="store_true", help="everything inline instead of ADS (no xDS)"
    )
    p.set_defaults(func=_cmd_bootstrap)

    p = sub.add_parser("config", help="check a config file or print an example")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config file")
    c.add_argument("file")
    csub.add_parser("example", help="print the annotated built-in config")
    p.set_defaults(func=_cmd_config)

    from warmroute.soak import FAULTS

    p = sub.add_parser("soak", help="traffic under random faults; check nothing is lost")
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults",
        type=_faults,
        default=FAULTS,
        help=f"comma list of faults to draw from (default all: {', '.join(FAULTS)})",
    )
    p.set_defaults(func=_cmd_soak)

    from warmroute.sim.__main__ import DESCRIPTION, add_arguments

    p = sub.add_parser(
        "sim",
        help="run one simulated GPU replica (see `warmroute sim -h`)",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    if args.command in ("serve", "sim") and args.verbose == 0:
        level = logging.INFO
    if args.command == "up" and args.verbose == 0 and (args.quiet or not sys.stdout.isatty()):
        level = logging.INFO  # a live table on a terminal would be scrolled away by logs
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose >= 3:
        # Otherwise the config watcher keeps it at WARNING (see config_watch).
        logging.getLogger("watchfiles").setLevel(logging.DEBUG)
    try:
        sys.exit(args.func(args))
    except ConfigError as exc:
        print(f"warmroute: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
