"""A pool's admission: its queue (``queue:``), priority bands and fair lanes (``priority:``),
and token budget per replica (``tokens:``). Each builds its part of the core's ``PoolSpec``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from warmroute.config._base import HeaderName, Name, StrictModel, located
from warmroute.state.priority import BandSpec, PrioritySpec
from warmroute.state.tokens import TokenSpec


class QueueConfig(StrictModel):
    max_waiting: int = Field(default=1000, ge=0, le=1_000_000)
    timeout_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # Answer 503 + Retry-After at once, instead of queueing, a request whose predicted
    # wait (learned service time, slots there are or are coming) and the pool's cold start
    # both exceed its queue timeout: it would only time out. See README "Wait for a warm
    # replica or start a cold one".
    reject_when_unmeetable: bool = False


class TokensConfig(StrictModel):
    """A replica's capacity in tokens as well as requests (README "Token-aware slots")."""

    # Tokens one replica holds at once: prompts plus completions of its running requests.
    capacity: int = Field(ge=1, le=1_000_000_000)
    # What a request without max_tokens (or max_completion_tokens) reserves for its answer.
    default_max_tokens: int = Field(default=1024, ge=0, le=1_000_000_000)
    # Request body bytes per prompt token, for the prompt estimate (warmroute never tokenizes).
    chars_per_token: float = Field(default=4.0, gt=0, le=1_000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _default_fits(self) -> TokensConfig:
        if self.default_max_tokens > self.capacity:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} is over capacity "
                f"{self.capacity}: a request without max_tokens could never be served"
            )
        return self

    def spec(self) -> TokenSpec:
        return TokenSpec(self.capacity, self.default_max_tokens, self.chars_per_token)


class BandConfig(StrictModel):
    name: Name
    # Unset: the pool's queue.max_waiting / queue.timeout_seconds.
    max_waiting: int | None = Field(default=None, ge=0, le=1_000_000)
    timeout_seconds: float | None = Field(default=None, gt=0, le=86_400)


class FairnessConfig(StrictModel):
    # Requests with the same value of this header share a lane of their band; lanes take
    # turns. Without the header a request is in the band's no-key lane.
    header: HeaderName


class PriorityConfig(StrictModel):
    """Bands in priority order (the first is served first); see README "Priorities"."""

    bands: list[BandConfig] = Field(min_length=1, max_length=16)
    # The band of a request that names none (or an unknown one); default: the last band.
    default: Name | None = None
    # A request header naming the request's band; an unknown name is ignored.
    header: HeaderName | None = None
    # model -> band; a band the header names wins.
    models: dict[Annotated[str, Field(min_length=1, max_length=256)], Name] = {}
    fairness: FairnessConfig | None = None

    @model_validator(mode="after")
    def _bands_known(self) -> PriorityConfig:
        names = [b.name for b in self.bands]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise located(f"band {name!r} is listed twice", "bands", i, "name")
        if self.default is not None and self.default not in names:
            raise located(f"default band {self.default!r} is not one of {names}", "default")
        for model, band in self.models.items():
            if band not in names:
                raise located(f"band {band!r} is not one of {names}", "models", model)
        return self

    def spec(self, queue: QueueConfig) -> PrioritySpec:
        names = [b.name for b in self.bands]
        return PrioritySpec(
            bands=tuple(
                BandSpec(
                    b.name,
                    queue.max_waiting if b.max_waiting is None else b.max_waiting,
                    queue.timeout_seconds if b.timeout_seconds is None else b.timeout_seconds,
                )
                for b in self.bands
            ),
            default=len(names) - 1 if self.default is None else names.index(self.default),
            header=self.header or "",
            model_bands=tuple((m, names.index(b)) for m, b in self.models.items()),
            fairness_header=self.fairness.header if self.fairness else "",
        )

    def max_timeout(self, queue: QueueConfig) -> float:
        return max(b.queue_timeout for b in self.spec(queue).bands)
