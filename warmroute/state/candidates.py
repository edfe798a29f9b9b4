"""The free test, written once: which replicas a new lease may go to right now.

A replica is free for a request when it is WARM, outlier detection does not hold it
(``Replica.held``: ejected or backed off), its address has a slot no pool's lease and no
external load takes (``Capacity.leased + Replica.external < Capacity.slots``: slots are
counted per address across every pool, see ``warmroute.state.replica``), it is in the
request's eligible set (if it has one) and, for a request with a token cost, its address
has that many tokens free (``Capacity.fits``).

The pool filters its replicas through ``free`` once per pick; scorers then rank only
what passed (``warmroute.state.picker``). Pure functions over the replicas; they never
mutate them.
"""

from __future__ import annotations

from collections.abc import Iterable

from warmroute.state.replica import Phase, Replica

_WARM = Phase.WARM  # a local: enum member access is a descriptor call in Python 3.11


def free(
    replicas: Iterable[Replica],
    eligible: frozenset[str] | None = None,
    tokens: int | None = None,
) -> list[Replica]:
    """The replicas of ``replicas`` free for a request (module doc), in their order.

    ``eligible``: the addresses it may use (None: any); ``tokens``: its token cost
    (None: slots only).
    """
    found = [
        r
        for r in replicas
        if r.phase is _WARM and not r.held and r.capacity.leased + r.external < r.capacity.slots
    ]
    if eligible is not None:
        found = [r for r in found if r.address in eligible]
    if tokens is not None:
        found = [r for r in found if r.capacity.fits(tokens)]
    return found
