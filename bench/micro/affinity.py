"""The lease hot path's cost with and without affinity: N try_acquire + release cycles.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/micro/affinity.py plain 20000
    valgrind --tool=callgrind ... python bench/micro/affinity.py plain 0   # the fixed cost

Instructions per cycle = (total(N) - total(0)) / N. ``plain``: a least_loaded pool, no
hint (the default path, which must not get dearer); ``affinity``: a prefix_affinity pool
with a 16-block prompt hint on every request (what the hint costs). Also prints
nanoseconds per cycle from ``perf_counter_ns`` for a run without valgrind.
"""

from __future__ import annotations

import sys
import time

from warmroute.state import Ask, Phase, PoolSpec, Registry, ReplicaUpsert
from warmroute.state.affinity import Affinity, AffinitySpec, prompt_blocks


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    reg = Registry()
    hints: list[Affinity | None] = [None] * 8
    if mode == "affinity":
        spec = PoolSpec("p", ("m",), policy="prefix_affinity", affinity=AffinitySpec())
        hints = [
            Affinity(blocks=prompt_blocks(f"system {i % 4} " * 400, 256, 16)) for i in range(8)
        ]
    else:
        spec = PoolSpec("p", ("m",))
    reg.configure([spec])
    for i in range(3):
        reg.apply(ReplicaUpsert("p", f"10.0.0.{i}:80", 4, Phase.WARM))
    pool = reg.pools["p"]
    acquire = pool.try_acquire
    asks = [Ask("r", affinity=hint) for hint in hints]
    start = time.perf_counter_ns()
    for i in range(n):
        lease = acquire(asks[i & 7])
        assert lease is not None
        lease.release()
    took = time.perf_counter_ns() - start
    if n:
        print(f"{mode}: {took / n:.0f} ns per try_acquire+release cycle ({n} cycles)")


if __name__ == "__main__":
    main()
