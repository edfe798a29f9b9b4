"""Micro-benchmark of the control plane's per-request path, without Envoy.

A client (this process) plays Envoy: per request it opens an ext_proc stream with the
pool marker in the gRPC metadata, sends the request headers, reads the decision, half-closes
(as Envoy does right after the reply) and reports the request's end on a long-lived
access-log stream, with the lease id in the entry's filter metadata like Envoy's entry.
The control plane (``warmroute.server.ControlPlane``, real gRPC server) runs in a child
process; its CPU time per request is read from /proc, so the client's own cost is not in it.

    python bench/micro/extproc.py [--rate 1000 | --concurrency 16] [--seconds 5]
        [--repo DIR] [--uvloop] [--gc-freeze] [--profile FILE] [--grpc-option name=value ...]

``--cycles N`` instead runs N decide+release cycles in this process, with no gRPC and no
event loop: the ext_proc decision on one request's headers (``ExternalProcessor._decide``)
and the access-log entry that ends its lease, the control plane's own work per request.
Run it under callgrind, and again with 0 cycles for the fixed cost; instructions per
cycle = (total(N) - total(0)) / N (``PYTHONPATH=DIR`` measures another checkout):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/micro/extproc.py --cycles 10000

``--repo`` runs another checkout's ``warmroute`` in the control plane (A/B comparisons);
``--grpc-option`` adds server options (ints where they parse) for experiments; ``--uvloop``
runs the control plane on uvloop (if importable); ``--gc-freeze`` freezes its startup heap.
Prints one JSON line: the plane's CPU per request (in total and per thread: the event loop,
grpc.aio's poller thread, gRPC core's event_engine threads), the client-side ext_proc round
trip, and the plane's garbage collections while measured. On a shared machine, alternate
variants over several runs and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
POOL, MODEL = "bench", "sim-model"
REPLICAS = [f"127.0.0.{i}:9000" for i in range(1, 5)]


# -- control plane (child) -----------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(args: argparse.Namespace) -> None:
    import cProfile

    import warmroute.server as server_mod
    from warmroute.config import Config
    from warmroute.server import ControlPlane

    for option in args.grpc_option:
        name, _, raw = option.partition("=")
        value: int | str = int(raw) if raw.lstrip("-").isdigit() else raw
        server_mod._GRPC_OPTIONS = [o for o in server_mod._GRPC_OPTIONS if o[0] != name]
        server_mod._GRPC_OPTIONS.append((name, value))
    control: dict[str, object] = {
        "grpc": f"127.0.0.1:{_free_port()}",
        "admin": f"127.0.0.1:{_free_port()}",
    }
    # No Envoy here reports load, so a start fence would hold every slot for its whole
    # grace; older checkouts (--repo) have no such setting.
    control_model = Config.model_fields["control"].annotation
    if "start_fence" in getattr(control_model, "model_fields", {}):
        control["start_fence"] = False
    cfg = Config.model_validate(
        {
            "control": control,
            "pools": [
                {
                    "name": POOL,
                    "models": [MODEL],
                    "slots": 100_000,
                    "probe": None,
                    "queue": {"max_waiting": 1_000_000, "timeout_seconds": 300},
                    "replicas": REPLICAS,
                }
            ],
        }
    )
    plane = ControlPlane(cfg)
    await plane.start()
    for _ in range(500):  # static replicas without probes: known at once
        if len(plane.registry.view().pools[0].replicas) == len(REPLICAS):
            break
        await asyncio.sleep(0.01)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()  # startup objects: never scanned again by the collector
    pauses = _record_gc()
    loop = asyncio.get_running_loop()
    print(json.dumps({"port": plane.grpc_port, "pid": os.getpid(),
                      "loop": type(loop).__module__}), flush=True)  # fmt: skip
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    prof: cProfile.Profile | None = None
    while line := (await reader.readline()).decode().strip():
        cmd, _, arg = line.partition(" ")
        reply: dict[str, Any] = {"ok": True}
        if cmd == "profile_start":
            prof = cProfile.Profile()
            prof.enable()
        elif cmd == "profile_stop" and prof is not None:
            prof.disable()
            prof.dump_stats(arg)
        elif cmd == "gc_clear":
            pauses.clear()
        elif cmd == "state":
            view = plane.registry.view()
            reply = {"leases": view.leases, "granted": view.pools[0].granted_immediately,
                     "gc": _gc_summary(pauses)}  # fmt: skip
        print(json.dumps(reply), flush=True)
    await plane.stop()


def _record_gc() -> list[tuple[int, float]]:
    """(generation, wall seconds) of every collection from now on."""
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(callback)
    return pauses


def _gc_summary(pauses: list[tuple[int, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gen in (0, 1, 2):
        mine = [p for g, p in pauses if g == gen]
        if mine:
            out[f"gen{gen}"] = {"n": len(mine), "total_ms": round(sum(mine) * 1e3, 2),
                                "max_ms": round(max(mine) * 1e3, 2)}  # fmt: skip
    return out


def cycles(n: int) -> None:
    """``--cycles``: n decide+release cycles in process (module doc)."""
    from warmroute.config import Config
    from warmroute.server import ControlPlane
    from warmroute.state import Phase, ReplicaUpsert

    cfg = Config.model_validate(
        {
            "control": {"grpc": "127.0.0.1:1", "admin": "127.0.0.1:1", "start_fence": False},
            "pools": [
                {"name": POOL, "models": [MODEL], "slots": 4, "probe": None, "replicas": REPLICAS}
            ],
        }
    )
    plane = ControlPlane(cfg)  # never started: only its registry and request path are used
    plane.registry.configure(cfg.specs())
    for address in REPLICAS:
        plane.registry.apply(ReplicaUpsert(POOL, address, 4, Phase.WARM))
    front_end = getattr(plane, "front_end", plane)  # checkouts before the director: plane
    decide, finish = front_end.processor._decide, front_end.access_log.finish
    requests = [_headers_message(i) for i in range(8)]
    entry = _log_entry(_template(), "", POOL, REPLICAS[0], 0)
    metadata = entry.common_properties.metadata.filter_metadata
    upstream = entry.common_properties.upstream_remote_address.socket_address
    for i in range(n):
        step = decide(requests[i & 7], POOL)
        try:
            step.send(None)  # a free replica: the decision never suspends
            raise RuntimeError("the decision waited: no replica was free")
        except StopIteration as done:
            answer = done.value
        fields = answer.dynamic_metadata.fields
        address = fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"]
        lease = fields["warmroute"].struct_value.fields["lease"].string_value
        metadata["warmroute"].fields["lease"].string_value = lease
        metadata["envoy.lb"].fields["x-gateway-destination-endpoint"].CopyFrom(address)
        upstream.address = address.string_value.rpartition(":")[0]
        finish(entry)
    if plane.registry.leases:
        raise RuntimeError(f"{len(plane.registry.leases)} leases left: releases went missing")
    print(json.dumps({"cycles": n}))


def serve_main(args: argparse.Namespace) -> None:
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


# -- client (plays Envoy) ------------------------------------------------------------------


def _headers_message(i: int) -> Any:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

    req = ep.ProcessingRequest()
    hs = req.request_headers.headers.headers
    for k, v in (
        (":authority", "127.0.0.1:10000"), (":path", "/v1/completions"), (":method", "GET"),
        (":scheme", "http"), ("user-agent", "loadgen"), ("x-model", MODEL),
        ("x-sim-service-ms", "0"), ("x-forwarded-proto", "http"),
        ("x-request-id", f"{i:08x}-6a2b-4c1d-9e8f-0123456789ab"),
        ("x-envoy-expected-rq-timeout-ms", "600000"),
    ):  # fmt: skip
        hs.append(base_pb2.HeaderValue(key=k, raw_value=v.encode()))
    req.request_headers.end_of_stream = True
    return req


def _log_entry(template: Any, lease_id: str, pool: str, address: str, i: int) -> Any:
    from envoy.data.accesslog.v3 import accesslog_pb2

    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.CopyFrom(template)
    common = entry.common_properties
    md = common.metadata.filter_metadata
    md["envoy.lb"].fields["x-gateway-destination-endpoint"].string_value = address
    ours = md["warmroute"].fields
    ours["lease"].string_value = lease_id
    ours["pool"].string_value = pool
    host, _, port = address.rpartition(":")
    common.upstream_remote_address.socket_address.address = host
    common.upstream_remote_address.socket_address.port_value = int(port)
    entry.request.request_id = f"{i:08x}-6a2b-4c1d-9e8f-0123456789ab"
    return entry


def _template() -> Any:
    from envoy.data.accesslog.v3 import accesslog_pb2

    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP11
    c = entry.common_properties
    c.access_log_type = accesslog_pb2.AccessLogType.DownstreamEnd
    c.downstream_remote_address.socket_address.address = "127.0.0.1"
    c.downstream_remote_address.socket_address.port_value = 40000
    c.downstream_direct_remote_address.CopyFrom(c.downstream_remote_address)
    c.downstream_local_address.socket_address.address = "127.0.0.1"
    c.downstream_local_address.socket_address.port_value = 10000
    c.upstream_local_address.socket_address.address = "127.0.0.1"
    c.upstream_local_address.socket_address.port_value = 50000
    c.upstream_cluster = "warmroute-pool-bench"
    c.route_name = "bench/sim-model"
    c.start_time.GetCurrentTime()
    for field, ns in (
        ("time_to_last_rx_byte", 20_000),
        ("time_to_first_upstream_tx_byte", 900_000),
        ("time_to_last_upstream_tx_byte", 910_000),
        ("time_to_first_upstream_rx_byte", 1_500_000),
        ("time_to_last_upstream_rx_byte", 1_520_000),
        ("time_to_first_downstream_tx_byte", 1_560_000),
        ("time_to_last_downstream_tx_byte", 1_580_000),
    ):
        getattr(c, field).nanos = ns
    c.upstream_transport_failure_reason = ""
    r = entry.request
    r.request_method = 1  # GET (envoy.config.core.v3.RequestMethod)
    r.scheme, r.authority, r.path = "http", "127.0.0.1:10000", "/v1/completions"
    r.user_agent = "loadgen"
    r.forwarded_for = ""
    r.request_headers_bytes = 180
    resp = entry.response
    resp.response_code.value = 200
    resp.response_headers_bytes = 150
    resp.response_body_bytes = 20
    resp.response_code_details = "via_upstream"
    return entry


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if task.name == str(pid):
            name = "main (event loop)"
        fields = text.rsplit(")", 1)[1].split()
        user, system = (int(fields[11]) / os.sysconf("SC_CLK_TCK"),
                        int(fields[12]) / os.sysconf("SC_CLK_TCK"))  # fmt: skip
        out[name] = out.get(name, 0.0) + user + system
        out[name + " (sys)"] = out.get(name + " (sys)", 0.0) + system
    return out


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Plane:
    def __init__(self, args: argparse.Namespace) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        argv += [f"--grpc-option={o}" for o in args.grpc_option]
        if args.gc_freeze:
            argv.append("--gc-freeze")
        if args.uvloop:
            argv.append("--uvloop")
        env = dict(os.environ)
        repo = str(Path(args.repo).resolve())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd=repo, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class FakeEnvoy:
    def __init__(self, port: int, streams: int = 2) -> None:
        import grpc
        from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
        from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

        self._als_pb2 = als_pb2
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = ep_grpc.ExternalProcessorStub(self.channel)
        als = als_pb2_grpc.AccessLogServiceStub(self.channel)
        self.log_calls = [als.StreamAccessLogs() for _ in range(streams)]
        # One writer per stream: a gRPC stream takes one write at a time (as Envoy's does).
        self.log_queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(streams)]
        self._writers: list[asyncio.Task[None]] = []
        self.template = _template()
        self.metadata = (("x-warmroute-pool", POOL),)
        self.rtts: list[float] = []
        self.errors = 0
        self._n = 0

    async def open(self) -> None:
        for k, call in enumerate(self.log_calls):
            msg = self._als_pb2.StreamAccessLogsMessage()
            msg.identifier.node.id = f"micro-{k}"
            msg.identifier.log_name = "warmroute"
            await call.write(msg)
            self._writers.append(asyncio.create_task(self._write_logs(call, self.log_queues[k])))

    async def _write_logs(self, call: Any, queue: asyncio.Queue[Any]) -> None:
        while (msg := await queue.get()) is not None:
            await call.write(msg)
        await call.done_writing()
        await call.code()

    async def request(self, i: int, record: bool) -> None:
        call = self.stub.Process(metadata=self.metadata)
        t0 = time.perf_counter()
        await call.write(_headers_message(i))
        resp = await call.read()
        rtt = time.perf_counter() - t0
        await call.done_writing()
        fields = resp.dynamic_metadata.fields
        ours = fields["warmroute"].struct_value.fields
        address = (
            fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"].string_value
        )
        if not address:
            self.errors += 1
        else:
            entry = _log_entry(self.template, ours["lease"].string_value,
                               ours["pool"].string_value, address, i)  # fmt: skip
            msg = self._als_pb2.StreamAccessLogsMessage()
            msg.http_logs.log_entry.append(entry)
            self._n += 1
            self.log_queues[self._n % len(self.log_queues)].put_nowait(msg)
        await call.code()  # Envoy keeps the stream until the server's status arrives
        if record:
            self.rtts.append(rtt)

    async def close(self) -> None:
        for queue in self.log_queues:
            queue.put_nowait(None)
        await asyncio.gather(*self._writers)
        await self.channel.close()


async def drive(envoy: FakeEnvoy, args: argparse.Namespace, seconds: float, record: bool) -> int:
    """Send for ``seconds``; return how many requests completed."""
    done = 0
    deadline = time.perf_counter() + seconds
    if args.concurrency:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await envoy.request(done, record)
                done += 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return done
    rng = random.Random(1)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    t = 0.0
    n = 0
    while True:
        t += rng.expovariate(args.rate)
        if t >= seconds:
            break
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(envoy.request(n, record))
        n += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    return n


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def client(args: argparse.Namespace, plane: Plane) -> dict[str, Any]:
    envoy = FakeEnvoy(plane.info["port"])
    await envoy.open()
    await drive(envoy, args, args.warmup, record=False)
    pid = plane.info["pid"]
    plane.ask("gc_clear")
    if args.profile:
        plane.ask("profile_start")
    cpu0, th0, t0 = _cpu(pid), _threads(pid), time.perf_counter()
    n = await drive(envoy, args, args.seconds, record=True)
    cpu1, th1, t1 = _cpu(pid), _threads(pid), time.perf_counter()
    if args.profile:
        plane.ask(f"profile_stop {args.profile}")
    await asyncio.sleep(0.2)
    state = plane.ask("state")
    await envoy.close()
    return {
        "repo": str(args.repo),
        "loop": plane.info["loop"],
        "mode": f"closed x{args.concurrency}" if args.concurrency else f"open {args.rate}/s",
        "grpc_options": args.grpc_option,
        "requests": n,
        "achieved_per_s": round(n / (t1 - t0), 1),
        "plane_cpu_us_per_request": round((cpu1 - cpu0) / n * 1e6, 1) if n else None,
        "plane_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 3),
        "plane_cpu_us_per_request_by_thread": {
            name: round((th1[name] - th0.get(name, 0.0)) / n * 1e6, 1)
            for name in th1
            if n and th1[name] - th0.get(name, 0.0) > 0
        },
        "rtt_p50_ms": round(_pct(envoy.rtts, 0.5) * 1e3, 3),
        "rtt_p99_ms": round(_pct(envoy.rtts, 0.99) * 1e3, 3),
        "errors": envoy.errors,
        "leases_left": state["leases"],
        "plane_gc": state["gc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    p.add_argument("--concurrency", type=int, default=0, help="closed loop with N in flight")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repo", default=str(ROOT), help="checkout whose warmroute to run")
    p.add_argument("--uvloop", action="store_true")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after startup")
    p.add_argument("--profile", default="", help="cProfile the plane; write stats here")
    p.add_argument("--grpc-option", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--cycles", type=int, default=None, help="in-process cycles (callgrind)")
    args = p.parse_args()
    if args.cycles is not None:
        cycles(args.cycles)
        return
    if args.serve:
        serve_main(args)
        return
    if args.profile:
        args.profile = str(Path(args.profile).resolve())  # the plane runs elsewhere
    plane = Plane(args)
    try:
        result = asyncio.run(client(args, plane))
    finally:
        plane.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
