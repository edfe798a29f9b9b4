"""Anthropic's Messages API (``POST /v1/messages``) as the simulated replica speaks it.

Pure values and functions, no I/O. Shapes follow Anthropic's API reference (the Message
object, its streaming events and its error shape) exactly as vLLM 0.32's ``/v1/messages``
writes them (recorded: ``tests/fixtures/vllm/lora/messages*.json``), so the official
``anthropic`` SDK's ``messages.create`` (streamed or not) and ``messages.stream`` read them:

* not streamed: ``{"id": "chatcmpl-…", "type": "message", "role": "assistant", "content":
  [{"type": "text", "text"}], "model", "stop_reason": "end_turn" | "max_tokens", "usage":
  {"input_tokens", "output_tokens"}}`` (vLLM's id prefix, and no ``stop_sequence`` key);
* streamed (``stream: true``): SSE events, each ``event: <type>`` + ``data: {json}``, in
  the real order: ``message_start`` (the message with empty content, no output tokens yet),
  ``content_block_start``, one ``content_block_delta`` (``text_delta``) per token,
  ``content_block_stop``, ``message_delta`` (``stop_reason`` and the token counts),
  ``message_stop``. No ``ping`` (Anthropic's API sends one after ``content_block_start``;
  vLLM does not) and no ``data: [DONE]``.
* a refused body: 400 ``{"type": "error", "error": {"type": "invalid_request_error",
  "message"}}``.

Lenient like the other APIs here: ``max_tokens`` may be absent (then the service-time
distribution decides the length), ``system`` is a string or text blocks, unknown fields are
ignored.
"""

from __future__ import annotations

import uuid
from typing import Any

from warmroute.sim import openai_api
from warmroute.sim.openai_api import ApiRequest, InvalidRequest, count_tokens, text, token

PATH = "/v1/messages"


def error_body(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    """Anthropic's error shape (vLLM's ``AnthropicErrorResponse``)."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def parse_request(raw: bytes, default_model: str) -> ApiRequest:
    """Validate a Messages API body; :class:`InvalidRequest` (answered 400 in Anthropic's
    shape) for a body that is not a JSON object or a known field of the wrong type."""
    body = openai_api.json_object(raw)
    model = openai_api.model_of(body, default_model)
    stream = openai_api.optional_bool(body, "stream")
    max_tokens = openai_api.optional_max(body, "max_tokens")
    prompt = _blocks_tokens(body.get("system"), "system")
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise openai_api.invalid("messages", "an array of message objects", messages)
    for i, message in enumerate(messages or []):
        if not isinstance(message, dict):
            raise openai_api.invalid(f"messages.{i}", "a message object", message)
        prompt += _blocks_tokens(message.get("content"), f"messages.{i}.content")
    return ApiRequest("messages", model, stream, False, max_tokens, prompt)


def _blocks_tokens(value: object, param: str) -> int:
    """A string, or content blocks whose ``text`` counts."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        return sum(
            count_tokens(b["text"])
            for b in value
            if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    raise openai_api.invalid(param, "a string or an array of content blocks", value)


def invalid_body(exc: InvalidRequest) -> dict[str, Any]:
    """A refused request body in Anthropic's error shape."""
    return error_body(str(exc))


class MessageReply:
    """One message's identity and the bodies and events built from it."""

    def __init__(self, request: ApiRequest) -> None:
        self.request = request
        self.id = f"chatcmpl-{uuid.uuid4().hex[:16]}"  # vLLM's, not Anthropic's msg_…

    def message(self, tokens: int, limited: bool) -> dict[str, Any]:
        """The whole ``message`` of ``tokens`` tokens."""
        content = [{"type": "text", "text": text(tokens)}]
        return {**self.envelope(content, tokens), "stop_reason": _stop(limited)}

    def envelope(self, content: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
        """A ``message`` holding ``content`` and ``tokens`` output tokens, not stopped."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": self.request.model,
            "usage": self.usage(tokens),
        }

    def usage(self, tokens: int) -> dict[str, int]:
        return {"input_tokens": self.request.prompt_tokens, "output_tokens": tokens}


def _stop(limited: bool) -> str:
    return "max_tokens" if limited else "end_turn"


class MessageEvents:
    """The SSE events of one streamed message (``sse.Events``): named by their ``type``,
    no ``[DONE]``."""

    named = True
    done_marker = False

    def __init__(self, reply: MessageReply, tokens: int, limited: bool) -> None:
        start = {**reply.envelope([], 0), "stop_reason": None, "stop_sequence": None}
        self.head: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "content_block": {"type": "text", "text": ""},
                "index": 0,
            },
        ]
        self.tail: list[dict[str, Any]] = [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop(limited), "stop_sequence": None},
                "usage": reply.usage(tokens),
            },
            {"type": "message_stop"},
        ]

    def token(self, index: int) -> dict[str, Any]:
        delta = {"type": "text_delta", "text": token(index)}
        return {"type": "content_block_delta", "delta": delta, "index": 0}
