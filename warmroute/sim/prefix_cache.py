"""A simulated prefix (KV) cache: a request whose prompt starts like a recent one is faster.

Like vLLM's automatic prefix caching, in miniature: the prompt is cut into blocks of
``block_chars`` characters, each named by a hash chained over the blocks before it, and
the replica keeps the last ``capacity_blocks`` blocks it served (LRU). A request's leading
blocks found in the cache are *hit*; its service time shrinks with the share of its
prompt that was hit, down to ``1 / speedup`` of it for a prompt served whole before:

    service * (1 - (1 - 1/speedup) * hit_blocks / prompt_blocks)

That is coarser than a server (the whole service time scales, not only the prefill) and
the cache is sized in blocks, not GPU memory; it is what makes affinity measurable. The
prompt is read as warmroute's router reads it (system, then each message's role and
text, else ``prompt``, else ``input``), but independently: a replica shares no code with
the router it tests.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """One request's lookup: its prompt's full blocks and how many leading ones were cached."""

    blocks: int
    hit: int

    def factor(self, speedup: float) -> float:
        """What the request's service time is multiplied by."""
        if self.blocks == 0 or speedup <= 1.0:
            return 1.0
        return 1.0 - (1.0 - 1.0 / speedup) * self.hit / self.blocks


class PrefixCache:
    """The replica's cached prompt blocks, least recently served first. One event loop."""

    def __init__(self, speedup: float, block_chars: int = 256, capacity_blocks: int = 4096) -> None:
        if speedup < 1.0 or block_chars < 1 or capacity_blocks < 1:
            raise ValueError("need speedup >= 1, block_chars >= 1 and capacity_blocks >= 1")
        self.speedup = speedup
        self.block_chars = block_chars
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def serve(self, body: bytes) -> PrefixHit:
        """Look the body's prompt up, then cache all its blocks (as serving it would)."""
        hashes = _block_hashes(_prompt(body), self.block_chars)
        cached = self._blocks
        hit = 0
        while hit < len(hashes) and hashes[hit] in cached:
            hit += 1
        for h in hashes:
            cached[h] = None
            cached.move_to_end(h)
        while len(cached) > self.capacity_blocks:
            cached.popitem(last=False)
        return PrefixHit(len(hashes), hit)

    def clear(self) -> None:
        self._blocks.clear()


def _block_hashes(text: str, size: int) -> list[bytes]:
    out: list[bytes] = []
    prev = b""
    for i in range(len(text) // size):
        prev = hashlib.blake2b(
            prev + text[i * size : (i + 1) * size].encode("utf-8", "surrogatepass"),
            digest_size=16,
        ).digest()
        out.append(prev)
    return out


def _prompt(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts: list[str] = []
    if (system := doc.get("system")) is not None:
        parts.append(f"system\n{_text(system)}\n")
    given = doc.get("messages")
    if not isinstance(given, list):
        given = doc.get("prompt", doc.get("input"))
    if isinstance(given, list) and all(isinstance(m, dict) for m in given):
        for m in given:
            role = m.get("role")
            parts.append(f"{role if isinstance(role, str) else ''}\n{_text(m.get('content'))}\n")
    elif given is not None:
        parts.append(_text(given))
    return "".join(parts)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str) else _text(p)
            for p in value
        )
    return "" if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)
