"""An ``Ask``: everything one request asks of a pool, as one value.

It is the single input of leasing (``Pool.try_acquire``) and waiting (``Pool.enqueue``)
and what scorers see of the request (``warmroute.state.scorers``). Every field but the
request id is optional, and each one matters only to pools configured for it:

* ``eligible``: the replica addresses it may use (an endpoint picker's subset hint);
  None: any replica of the pool;
* ``tokens``: its cost in a pool with a token budget (``TokenSpec.cost``); None, or a
  pool without a budget: slots only;
* ``affinity``: its prompt-prefix and session hint (``warmroute.state.affinity``); read by
  the prefix and session scorers, and remembered for the replica it is granted;
* ``band`` and ``key``: its priority band (index or name; None: the default) and its
  fairness key ("" for none) in a pool with priority bands; they order the queue only,
  never choose a replica.

The request path (``warmroute.director``) builds it after pricing the request for its
pool; the core never parses a request itself.
"""

from __future__ import annotations

from typing import NamedTuple

from warmroute.state.affinity import Affinity


class Ask(NamedTuple):
    """One request's ask of one pool. Immutable; see the module doc for each field.

    A NamedTuple rather than a frozen dataclass: one is built per request on the hot path,
    where a frozen dataclass's ``__init__`` (a call per field) costs three times as much
    (measured). ``_replace`` returns a changed copy.
    """

    request_id: str
    eligible: frozenset[str] | None = None
    tokens: int | None = None
    affinity: Affinity | None = None
    band: int | str | None = None
    key: str = ""
