"""Priority bands and fairness of a pool's queue: the values the core is configured with.

A pool with a ``PrioritySpec`` queues each request in a band (highest first) and, inside
the band, in its fairness key's lane (see ``warmroute.state.waiters``). The band comes
from a request header naming it, else the request's model's band, else the default; a
header naming no band is ignored rather than refused (a priority is a hint that only
orders the queue, never a reason to fail a request). Bands only order the queue: they
never choose a replica.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_KEY_LEN = 256
"""Fairness keys are cut to this length: a client cannot grow a lane's name unboundedly."""


@dataclass(frozen=True, slots=True)
class BandSpec:
    """One band: at most ``max_waiting`` of its requests wait, each ``queue_timeout`` s."""

    name: str
    max_waiting: int = 1000
    queue_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class PrioritySpec:
    """Bands in priority order (index 0 is served first), and how requests pick theirs.

    ``header``: a request header naming a band ("" for none); ``model_bands``: (model,
    band index) pairs; ``fairness_header``: the request header whose value is the
    fairness key ("" for none: one lane per band).
    """

    bands: tuple[BandSpec, ...]
    default: int = 0
    header: str = ""
    model_bands: tuple[tuple[str, int], ...] = ()
    fairness_header: str = ""

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError("a PrioritySpec needs at least one band")
        if not 0 <= self.default < len(self.bands):
            raise ValueError(f"default band {self.default} is not one of the bands")
        if any(not 0 <= band < len(self.bands) for _, band in self.model_bands):
            raise ValueError("model_bands names a band index out of range")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def index(self, band: int | str | None) -> int:
        """The band's index: by index, by name, None (or an unknown name) the default."""
        if band is None:
            return self.default
        if isinstance(band, int):
            if not 0 <= band < len(self.bands):
                raise ValueError(f"band {band} is not one of {len(self.bands)} bands")
            return band
        for i, b in enumerate(self.bands):
            if b.name == band:
                return i
        return self.default

    def choose(self, named: str | None, model: str | None) -> int:
        """The band of a request: the one ``named`` (from the header) if it is a band,
        else ``model``'s band if it has one, else the default."""
        if named is not None:
            for i, b in enumerate(self.bands):
                if b.name == named:
                    return i
        if model is not None:
            for m, band in self.model_bands:
                if m == model:
                    return band
        return self.default
