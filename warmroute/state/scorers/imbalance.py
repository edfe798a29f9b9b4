"""The load-imbalance bound that affinity scorers respect (``AffinitySpec.max_imbalance``).

A replica an affinity scorer prefers (it served the prompt's prefix, or the session) is
preferred only while it has at most ``max_imbalance`` more requests in flight than the
least busy candidate: beyond that, affinity would cost more in queueing than it saves in
cache hits, and the load scorer decides. In flight counts the address's leases across
every pool plus its external load, as the free test does.
"""

from __future__ import annotations

from collections.abc import Sequence

from warmroute.state.replica import Replica


def within(candidates: Sequence[Replica], max_imbalance: int) -> list[bool]:
    """Per candidate, whether it is within ``max_imbalance`` of the least busy one."""
    busy = [r.capacity.leased + r.external for r in candidates]
    least = min(busy, default=0)
    return [b - least <= max_imbalance for b in busy]
