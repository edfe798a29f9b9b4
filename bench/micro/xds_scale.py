"""Config-plane scale: build + serialize EDS for many replicas; push to many ADS clients.

    python bench/micro/xds_scale.py [--replicas 1000 10000] [--clients 100] [--rounds 5]

Prints a markdown table. Clients are real gRPC ADS streams (state of the world) in this
process, subscribed to CDS and EDS like an Envoy; a round is one endpoint change and ends
when every client has received it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from warmroute.xds.ads import AdsServer
from warmroute.xds.builder import endpoint_resources
from warmroute.xds.cache import SnapshotCache
from warmroute.xds.resources import Endpoint, pool_cluster_name
from warmroute.xds.snapshot import CLUSTER, ENDPOINT


def endpoints(n: int, salt: int = 0) -> list[Endpoint]:
    return [
        Endpoint(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{8000 + salt}") for i in range(n)
    ]


def bench_build(n: int, rounds: int) -> tuple[float, float, int]:
    """Median seconds to build+pack EDS for n replicas, and to serialize a response."""
    build, serialize = [], []
    size = 0
    for r in range(rounds):
        t = time.perf_counter()
        eds = endpoint_resources(["pool"], {"pool": endpoints(n, r)})
        build.append(time.perf_counter() - t)
        t = time.perf_counter()
        resp = discovery_pb2.DiscoveryResponse(
            version_info=eds.version, type_url=ENDPOINT,
            resources=[res.packed for res in eds.items.values()],
        )  # fmt: skip
        size = len(resp.SerializeToString())
        serialize.append(time.perf_counter() - t)
    return statistics.median(build), statistics.median(serialize), size


async def bench_push(clients: int, n: int, rounds: int) -> list[float]:
    from warmroute.xds.snapshot import Resource, Resources, Snapshot

    cache = SnapshotCache()
    from envoy.config.cluster.v3 import cluster_pb2

    cluster = cluster_pb2.Cluster(name=pool_cluster_name("pool"))
    cache.set_default(Snapshot({CLUSTER: Resources.of([Resource.of(cluster.name, cluster)])}))
    cache.set_endpoints(endpoint_resources(["pool"], {"pool": endpoints(n)}))
    ads = AdsServer(cache)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    latest: list[str] = [""] * clients
    got = asyncio.Event()
    target = [""]

    async def client(i: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
            req = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT)
            req.node.id = f"bench-{i}"
            req.resource_names.append(pool_cluster_name("pool"))
            await call.write(req)
            async for resp in call:
                latest[i] = resp.version_info
                ack = discovery_pb2.DiscoveryRequest(
                    type_url=ENDPOINT, version_info=resp.version_info,
                    response_nonce=resp.nonce, resource_names=req.resource_names,
                )  # fmt: skip
                await call.write(ack)
                if all(v == target[0] for v in latest):
                    got.set()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    times = []
    try:
        target[0] = cache.snapshot_for("x").version(ENDPOINT)
        await asyncio.wait_for(got.wait(), 60)
        for r in range(rounds):
            got.clear()
            eds = endpoint_resources(["pool"], {"pool": endpoints(n, r + 1)})
            target[0] = eds.version
            t = time.perf_counter()
            cache.set_endpoints(eds)
            await asyncio.wait_for(got.wait(), 60)
            times.append(time.perf_counter() - t)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ads.close()
        await server.stop(0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| replicas | build + pack EDS | serialize response | response bytes |")
    print("| --- | --- | --- | --- |")
    for n in args.replicas:
        b, s, size = bench_build(n, args.rounds)
        print(f"| {n:,} | {b * 1e3:.1f} ms | {s * 1e3:.2f} ms | {size:,} |", flush=True)
    print()
    print(f"| ADS clients | replicas per update | push to all (median) | max of {args.rounds} |")
    print("| --- | --- | --- | --- |")
    for n in (1, *args.replicas):
        t = asyncio.run(bench_push(args.clients, n, args.rounds))
        print(
            f"| {args.clients} | {n:,} | {statistics.median(t) * 1e3:.1f} ms "
            f"| {max(t) * 1e3:.1f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
