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


DEFAULT_TOKENS = 16
"""Tokens a response generates when neither ``max_tokens`` nor a test header sets the count."""


@dataclass(frozen=True, slots=True)
class TokenTiming:
    """How long generation takes when a request sets ``max_tokens``: ``ttft_ms`` to the first
    token, then ``per_token_ms`` per token. Raises :class:`ValueError` unless both are finite
    and >= 0."""

    ttft_ms: float = 20.0
    per_token_ms: float = 5.0

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "per_token_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Generation:
    """When the tokens of one response are due, in seconds after the request took its slot.

    Token ``i`` (``0 <= i < tokens``) is due at :meth:`due`; the slot is held until
    ``service_s``, which is never before the last token.
    """

    service_s: float
    tokens: int
    first_s: float
    step_s: float

    def due(self, index: int) -> float:
        """Seconds after admission at which token ``index`` is emitted."""
        return self.first_s + index * self.step_s


def plan_generation(
    service: ServiceTime,
    timing: TokenTiming,
    rng: random.Random,
    *,
    max_tokens: int | None = None,
    tokens: int | None = None,
    service_ms: float | None = None,
) -> Generation:
    """Plan one response. ``tokens`` (a test override) else ``max_tokens`` else
    :data:`DEFAULT_TOKENS` tokens are generated. The slot is held for ``service_ms`` if given
    (a test override), else ``ttft + tokens * per_token`` if ``max_tokens`` is set, else a
    sample of ``service``; without ``max_tokens`` the tokens are spread evenly over that time,
    the last one due at its end. Draws from ``rng`` only when sampling ``service``.
    """
    count = tokens if tokens is not None else max_tokens if max_tokens is not None else None
    count = DEFAULT_TOKENS if count is None else count
    if service_ms is None and max_tokens is not None:
        ttft, step = timing.ttft_ms / 1000.0, timing.per_token_ms / 1000.0
        return Generation(ttft + count * step, count, ttft + step, step)
    service_s = service.sample(rng) if service_ms is None else service_ms / 1000.0
    step = service_s / count if count else 0.0
    return Generation(service_s, count, step, step)
