"""Affinity hints: which replica recently served a prompt prefix or a session.

A model server keeps the KV cache of the prompts it served (vLLM's prefix caching): a
request whose prompt starts like a recent one is cheaper on the replica that served it.
The request path turns a request into an ``Affinity`` (its session key and the hashes of
its prompt's leading blocks, ``prompt_blocks``); the pool remembers, per key, the
replicas it granted such a request to (``AffinityMemory``, a bounded LRU of plain data)
and the prefix and session scorers (``warmroute.state.scorers``) prefer among the free
replicas the one with the longest remembered prefix, or the session's, within a
load-imbalance bound.

It is approximate on purpose: the memory is what warmroute granted, not what the server
still caches (it may have evicted it), and blocks are characters, not tokens. A wrong
guess costs only a cache miss; the imbalance bound keeps it from costing load balance.

Block hashes are chained (block ``i``'s hash covers blocks ``0..i``), so one hash names a
whole prefix and a match on block ``i`` implies the blocks before it matched too. They use
BLAKE2b, not ``hash()``: stable across processes and restarts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

# Replicas remembered per key, most recent first: a popular system prompt is cached on
# several replicas, and any of them is a good pick.
PER_KEY = 4
_PER_KEY = PER_KEY

# A replica's affinity for a request: (leading blocks it served, recency); higher wins.
Score = tuple[int, int]


@dataclass(frozen=True, slots=True)
class AffinitySpec:
    """A pool's affinity settings (``affinity:`` in the pool's config)."""

    # A preferred replica is chosen only if its in-flight count exceeds the least busy
    # free replica's by at most this many; otherwise the pick is least_loaded's.
    max_imbalance: int = 2
    # Prompt characters per block; 0 hashes nothing (session affinity only).
    block_chars: int = 256
    # Only the leading blocks count (bounds the hashing per request).
    max_blocks: int = 128
    # A request header whose value pins a session to the replica that served it last
    # ("": no session affinity).
    session_header: str = ""
    # Keys (block hashes and sessions) the pool remembers; least recently granted go first.
    memory: int = 65_536


@dataclass(frozen=True, slots=True)
class Affinity:
    """One request's hint: its session key ("" for none) and prompt block hashes."""

    session: str = ""
    blocks: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.session or self.blocks)


def prompt_blocks(text: str, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """Chained hashes of ``text``'s leading full blocks of ``block_chars`` characters.

    Only full blocks count, as a server caches only full KV blocks: a prompt shorter than
    one block has none. At most ``max_blocks``; none if ``block_chars`` is 0.
    """
    if block_chars <= 0:
        return ()
    count = min(len(text) // block_chars, max_blocks)
    hashes: list[int] = []
    prev = b""
    for i in range(count):
        chunk = text[i * block_chars : (i + 1) * block_chars].encode("utf-8", "surrogatepass")
        prev = hashlib.blake2b(prev + chunk, digest_size=8).digest()
        hashes.append(int.from_bytes(prev, "big"))
    return tuple(hashes)


class AffinityMemory:
    """Key (block hash or session) -> the replicas recently granted it, a bounded LRU.

    Pure data owned by one pool; synchronous, not thread-safe. Addresses of replicas that
    are gone may linger until evicted: a pick only ever considers the pool's free replicas.
    """

    __slots__ = ("_keys", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[int | str, tuple[str, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def remember(self, affinity: Affinity, address: str) -> None:
        """``address`` was granted a request with ``affinity``: it now has its keys first."""
        keys = self._keys
        for key in (*affinity.blocks, *((affinity.session,) if affinity.session else ())):
            old = keys.pop(key, ())
            if old and old[0] == address:
                keys[key] = old
                continue
            keys[key] = (address, *[a for a in old if a != address][: _PER_KEY - 1])
        while len(keys) > self.capacity:
            keys.popitem(last=False)

    def scores(self, affinity: Affinity) -> dict[str, Score]:
        """Address -> (how many leading blocks it served, how recently: ``PER_KEY`` for
        the latest replica granted the deepest of them, down to 1). The session's last
        replica scores above any prefix. Read-only: looking up refreshes nothing.

        Recency breaks ties on purpose: a prompt that overflowed to a second replica is
        cached on both, and sending it back to the most recent one keeps each prompt on
        as few replicas as load allows, so each replica's cache holds fewer prompts.
        """
        scores = self.prefix_scores(affinity.blocks)
        last = self.session_of(affinity.session)
        if last is not None:
            scores[last] = (len(affinity.blocks) + 1, _PER_KEY)
        return scores

    def prefix_scores(self, blocks: tuple[int, ...]) -> dict[str, Score]:
        """``scores`` for the prompt blocks alone (no session)."""
        keys = self._keys
        scores: dict[str, Score] = {}
        for i, key in enumerate(blocks, 1):
            entry = keys.get(key)
            if entry is None:
                # Chained hashes: a later block cannot match where this one did not (unless
                # evicted out of order, which remember() never does within one request).
                break
            for rank, address in enumerate(entry):
                scores[address] = (i, _PER_KEY - rank)
        return scores

    def session_of(self, session: str) -> str | None:
        """The replica last granted ``session`` ("" or forgotten: None). Read-only."""
        if not session:
            return None
        entry = self._keys.get(session)
        return None if entry is None else entry[0]

    def ordered(self) -> list[int | str]:
        """The remembered keys, least recently granted first (for tests and views)."""
        return list(self._keys)
