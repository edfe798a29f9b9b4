"""The errors warmroute tells clients and operators about.

Tree:
    WarmrouteError                 base; ``code`` is stable, ``http_status`` is what a client sees
    ├── RequestRejected            a request cannot be routed
    │   ├── MissingModel           400: no model in the header, the body or the route
    │   ├── InvalidBody            400: the body is not the JSON object the API expects
    │   ├── ModelMismatch          400: the model header and the body's model disagree
    │   ├── BodyTooLarge           413: the body is over ``routing.max_body_bytes``
    │   ├── RequestTooLarge        400: its tokens are over a replica's whole token budget
    │   ├── UnknownModel           404: the model names no pool
    │   ├── QueueFull              429: the pool's wait queue is at its bound
    │   ├── Displaced              429 + Retry-After: a higher band took its place in the queue
    │   ├── QueueTimeout           503 + Retry-After: waited longer than the pool allows
    │   ├── NoEligibleEndpoint     503 + Retry-After: EPP subset hint names nothing servable
    │   └── NotServing             503 + Retry-After: this instance does not lease requests now
    └── ConfigError                a config file is invalid (file, key path, expectation)

Request errors are translated to an ext_proc ``ImmediateResponse`` in one place,
``warmroute.request.responses``, for both ext_proc front ends (counted and logged once
by ``warmroute.director.Director.refused``). Envoy's own 413 for a body
over the limit (own-Envoy mode) is a local reply in the same JSON shape, configured in
``warmroute.xds.resources``.
"""

from __future__ import annotations


class WarmrouteError(Exception):
    code: str = "internal"
    http_status: int = 500


class RequestRejected(WarmrouteError):
    """A request that warmroute refuses to route; ``retry_after`` is seconds or None."""

    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class MissingModel(RequestRejected):
    code = "missing_model"
    http_status = 400


class InvalidBody(RequestRejected):
    code = "invalid_body"
    http_status = 400


class ModelMismatch(RequestRejected):
    code = "model_mismatch"
    http_status = 400


class BodyTooLarge(RequestRejected):
    code = "body_too_large"
    http_status = 413


class RequestTooLarge(RequestRejected):
    """Its prompt estimate plus ``max_tokens`` is more than a replica of its pool can
    ever hold (``tokens.capacity``): refused at once, never queued. 400, as OpenAI answers
    a prompt over the context window (``context_length_exceeded``); a 413 would also be
    taken for Envoy's own body-size reply, which the gateway rewrites."""

    code = "request_too_large_for_pool"
    http_status = 400


class NoEligibleEndpoint(RequestRejected):
    """EPP mode: no endpoint (within the gateway's subset hint) can ever serve this."""

    code = "no_eligible_endpoint"
    http_status = 503
    retry_after = 1.0


class UnknownModel(RequestRejected):
    code = "unknown_model"
    http_status = 404


class QueueFull(RequestRejected):
    code = "queue_full"
    http_status = 429
    retry_after = 1.0


class Displaced(RequestRejected):
    """Waited in a lower priority band and was turned away for a higher band's request."""

    code = "displaced"
    http_status = 429
    retry_after = 1.0


class QueueTimeout(RequestRejected):
    code = "queue_timeout"
    http_status = 503
    retry_after = 1.0


class NotServing(RequestRejected):
    code = "not_serving"
    http_status = 503
    retry_after = 1.0


class ConfigError(WarmrouteError):
    """An invalid config. ``str()`` is the full, user-facing explanation."""

    code = "invalid_config"

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid config {path}:\n{lines}")
