"""Kubernetes ``Status`` errors, shaped like kube-apiserver's (``k8s.io/apimachinery/.../errors``).

Every failure the test API server reports is an :class:`ApiError`; :meth:`ApiError.body` is the
``Status`` object (``kind: Status``, ``status: Failure``, ``reason``, ``code``, ``details``) the
real server would send, either as an HTTP response body or inside a watch ``ERROR`` event.
Reasons and message formats follow the real server so client code that branches on them
(``exc.status == 409``, ``reason == "Expired"``) is exercised faithfully.
"""

from __future__ import annotations

from typing import Any

OPTIMISTIC_LOCK_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)

_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """A request failure with the ``Status`` the real API server would return."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = dict(details or {})
        self.retry_after = retry_after
        if retry_after is not None:
            self.details["retryAfterSeconds"] = retry_after

    def body(self) -> dict[str, Any]:
        """The ``Status`` object (a fresh dict; the caller may keep or change it)."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = dict(self.details)
        return status


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    """404 NotFound: ``pods "x" not found`` / ``deployments.apps "x" not found``."""
    message = f'{_qualified(group, plural)} "{name}" not found'
    return ApiError(404, message, details=_details(group, plural, name))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """409 AlreadyExists, from a create whose name is taken."""
    message = f'{_qualified(group, plural)} "{name}" already exists'
    return ApiError(409, message, reason="AlreadyExists", details=_details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str = OPTIMISTIC_LOCK_MESSAGE) -> ApiError:
    """409 Conflict, e.g. an update carrying a stale ``metadata.resourceVersion``."""
    message = f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": {why}'
    return ApiError(409, message, details=_details(group, plural, name))


def invalid(group: str, kind: str, name: str, field: str, value: Any, why: str) -> ApiError:
    """422 Invalid with one field cause, like ``errors.NewInvalid``."""
    cause = f"{field}: Invalid value: {value!r}: {why}"
    message = f'{kind} "{name}" is invalid: {cause}'
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field}],
    }
    if group:
        details["group"] = group
    return ApiError(422, message, details=details)


def expired(requested: int, oldest: int) -> ApiError:
    """410 Expired for a watch from before the retained history (watch cache wording)."""
    return ApiError(410, f"too old resource version: {requested} ({oldest})")


def too_large(requested: int, current: int) -> ApiError:
    """504 Timeout for a resourceVersion the server has not reached yet."""
    return ApiError(
        504,
        f"Too large resource version: {requested}, current: {current}",
        details={
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ]
        },
        retry_after=1,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def injected(code: int, retry_after: int | None = None) -> ApiError:
    """What an overloaded or broken API server answers with (fault injection)."""
    messages = {
        429: "the server has received too many requests and has asked us to try again later",
        500: "Internal error occurred: injected fault",
        503: "the server is currently unable to handle the request",
        504: "the server was unable to return a response in the time allotted",
    }
    return ApiError(code, messages.get(code, "injected fault"), retry_after=retry_after)
