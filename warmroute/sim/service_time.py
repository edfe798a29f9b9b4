"""Service-time distributions for the simulated replica.

A :class:`ServiceTime` is an immutable value describing how long one inference request
occupies a slot. It holds no random state: callers pass their own :class:`random.Random`,
so a seeded replica is reproducible and two replicas never share a generator.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

Distribution = Literal["fixed", "lognormal"]
"""Names accepted for :attr:`ServiceTime.distribution`."""

DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)


@dataclass(frozen=True, slots=True)
class ServiceTime:
    """How long a simulated request takes, in milliseconds.

    ``fixed``: every sample is exactly ``median_ms`` (``sigma`` is ignored).
    ``lognormal``: ``median_ms * exp(sigma * N(0, 1))``, so half the samples fall below
    ``median_ms``; ``sigma`` is the standard deviation of the log of the service time.

    Construction validates the fields and raises :class:`ValueError` on bad input, so every
    instance is usable; :func:`parse_service_time` additionally narrows a plain ``str``.
    """

    distribution: Distribution
    median_ms: float
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown service-time distribution {self.distribution!r}; "
                f"expected one of {', '.join(DISTRIBUTIONS)}"
            )
        if not math.isfinite(self.median_ms) or self.median_ms <= 0:
            raise ValueError(
                f"service-time median_ms must be a finite number > 0, got {self.median_ms!r}"
            )
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"service-time sigma must be a finite number >= 0, got {self.sigma!r}")

    def sample(self, rng: random.Random) -> float:
        """Draw one service time, in **seconds** (always > 0).

        Consumes randomness from ``rng`` only for the lognormal distribution.
        """
        median_s = self.median_ms / 1000.0
        if self.distribution == "fixed":
            return median_s
        return median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0))


def parse_service_time(distribution: str, median_ms: float, sigma: float = 0.0) -> ServiceTime:
    """Build a :class:`ServiceTime` from untyped input (CLI flags, config files).

    Raises :class:`ValueError` naming the bad field when ``distribution`` is not one of
    :data:`DISTRIBUTIONS`, ``median_ms`` is not > 0, or ``sigma`` is negative (NaN and
    infinities are rejected too).
    """
    name = distribution.strip().lower()
    if name == "fixed":
        return ServiceTime("fixed", float(median_ms), float(sigma))
    if name == "lognormal":
        return ServiceTime("lognormal", float(median_ms), float(sigma))
    raise ValueError(
        f"unknown service-time distribution {distribution!r}; "
        f"expected one of {', '.join(DISTRIBUTIONS)}"
    )
