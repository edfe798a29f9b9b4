"""Which API a request path speaks, and that API's bodies: one table for the replica.

``POST`` paths and their modules: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings`` (``openai_api``), ``/v1/responses`` (``responses_api``), ``/v1/messages``
(``anthropic_api``). Each parses into an :class:`ApiRequest` and answers in its own shape,
errors included (Anthropic's ``{"type": "error", ...}`` on ``/v1/messages``, OpenAI's and
vLLM's ``{"error": {...}}`` elsewhere). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from warmroute.sim import anthropic_api, openai_api, responses_api
from warmroute.sim.openai_api import ApiRequest, ChunkStream, InvalidRequest, Reply
from warmroute.sim.sse import Events

_PARSERS: dict[str, Callable[[bytes, str], ApiRequest]] = {
    **{path: partial(openai_api.parse_request, kind) for path, kind in openai_api.PATHS.items()},
    responses_api.PATH: responses_api.parse_request,
    anthropic_api.PATH: anthropic_api.parse_request,
}

PATHS = frozenset(_PARSERS)
"""Every ``POST`` path answered in an API's shape."""


def parse(path: str, raw: bytes, default_model: str) -> ApiRequest | None:
    """The request ``raw`` on ``path`` (None if ``path`` speaks no API); raises
    :class:`InvalidRequest` for a body the API refuses."""
    parser = _PARSERS.get(path)
    return None if parser is None else parser(raw, default_model)


def error_body(path: str, message: str, type_: str, code: int, param: str | None) -> Any:
    """An error answer in ``path``'s API's shape (vLLM's ``ErrorResponse`` fields; on
    ``/v1/messages`` vLLM's translation to Anthropic's, which keeps ``type`` and
    ``message``)."""
    if path == anthropic_api.PATH:
        return anthropic_api.error_body(message, type_)
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def invalid_body(path: str, exc: InvalidRequest) -> dict[str, Any]:
    """The 400 for a refused body, in ``path``'s API's shape."""
    if path == anthropic_api.PATH:
        return anthropic_api.invalid_body(exc)
    return exc.body()


def answer(api: ApiRequest, tokens: int, limited: bool) -> dict[str, Any]:
    """The whole (non-streamed) answer of ``tokens`` tokens; ``limited``: the request's
    token limit ended it."""
    match api.kind:
        case "responses":
            return responses_api.ResponseReply(api).response(tokens, limited)
        case "messages":
            return anthropic_api.MessageReply(api).message(tokens, limited)
        case "embedding":
            return Reply.new(api).embeddings()
        case _:
            return Reply.new(api).completion(tokens, "length" if limited else "stop")


def events(api: ApiRequest, tokens: int, limited: bool, *, framed: bool = True) -> Events:
    """The streamed answer's events; ``framed`` False only for the ``x-sim-stream-chunks``
    test header on the OpenAI paths (exactly one event per token)."""
    match api.kind:
        case "responses":
            return responses_api.ResponseEvents(responses_api.ResponseReply(api), tokens, limited)
        case "messages":
            return anthropic_api.MessageEvents(anthropic_api.MessageReply(api), tokens, limited)
        case _:
            finish = "length" if limited else "stop"
            return ChunkStream(Reply.new(api), tokens, finish, framed=framed)
