"""What a request asks of its pool, read from its source as the pool's spec says.

Each pool feature reads only what it needs, and only in pools that have it (a pool with
none of them reads nothing: the plain request's ``Ask`` is its id alone):

* ``cost`` (pools with ``tokens:``): its prompt estimated from the body's size plus its
  completion bound (``TokenSpec.cost``);
* ``hint`` (pools with ``policy: prefix_affinity``): its session header's value and the
  chained hashes of its prompt's leading blocks (``warmroute.state.affinity``);
* ``rank`` (pools with ``priority:``, only for a request that has to wait): its band (the
  one the band header names, else its model's, else the default) and its fairness key.
  They only order the queue; they never choose a replica.

Pure functions of the spec and the ``Source`` (``warmroute.director.request``).
"""

from __future__ import annotations

from warmroute.director.request import Source
from warmroute.state.affinity import Affinity, AffinitySpec, prompt_blocks
from warmroute.state.priority import MAX_KEY_LEN, PrioritySpec
from warmroute.state.tokens import TokenSpec


def cost(spec: TokenSpec, source: Source) -> int:
    """The tokens the request reserves on its replica."""
    return spec.cost(source.body_size(), source.max_tokens())


def hint(spec: AffinitySpec, source: Source) -> Affinity | None:
    """The request's affinity hint, or None if it has neither a session nor a full
    prompt block (only full blocks count, as a server caches only full KV blocks)."""
    session = (source.header(spec.session_header) or "") if spec.session_header else ""
    blocks: tuple[int, ...] = ()
    if spec.block_chars > 0:
        text = source.prompt(spec.block_chars * spec.max_blocks)
        blocks = prompt_blocks(text, spec.block_chars, spec.max_blocks)
    return Affinity(session, blocks) if session or blocks else None


def rank(spec: PrioritySpec, source: Source, model: str | None) -> tuple[int, str]:
    """(band index, fairness key): the band the band header names (else the model's,
    else the default) and the fairness header's value, cut to ``MAX_KEY_LEN``. A header
    naming no band is ignored, never refused: a priority is only a hint."""
    named = source.header(spec.header) if spec.header else None
    key = source.header(spec.fairness_header) if spec.fairness_header else None
    return spec.choose(named, model), (key or "")[:MAX_KEY_LEN]
