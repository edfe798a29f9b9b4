"""OpenAI's Responses API (``POST /v1/responses``) as the simulated replica speaks it.

Pure values and functions, no I/O. Shapes follow OpenAI's API reference for the Responses
API (the ``Response`` object and its streaming events), so the official ``openai`` SDK's
``responses.create`` (streamed or not) and ``responses.stream`` read them:

* not streamed: one ``response`` object with vLLM 0.32's fields, ``status`` ``completed``
  (or ``incomplete`` with ``incomplete_details.reason: max_output_tokens`` when the answer hit
  ``max_output_tokens``), one ``message`` output item holding one ``output_text`` part;
* streamed (``stream: true``): SSE events, each ``event: <type>`` + ``data: {json}`` with a
  rising ``sequence_number``, in the real order: ``response.created``,
  ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, one ``response.output_text.delta`` per token, then
  ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done`` and ``response.completed`` (its response ``incomplete`` if
  cut by ``max_output_tokens``, as vLLM 0.32's ``serving.py`` ends every stream). No ``data:
  [DONE]`` (the Responses API sends none).

The request is read leniently like the other APIs here: ``input`` (a string or a list of
items), ``instructions``, ``max_output_tokens``, ``stream``, ``model``; unknown fields are
ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from warmroute.sim import openai_api
from warmroute.sim.openai_api import ApiRequest, count_tokens, text, token

PATH = "/v1/responses"


def parse_request(raw: bytes, default_model: str) -> ApiRequest:
    """Validate a Responses API body; :class:`openai_api.InvalidRequest` (400, OpenAI's
    error shape) for a body that is not a JSON object or a known field of the wrong type."""
    body = openai_api.json_object(raw)
    model = openai_api.model_of(body, default_model)
    stream = openai_api.optional_bool(body, "stream")
    max_tokens = openai_api.optional_max(body, "max_output_tokens")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise openai_api.invalid("instructions", "a string", instructions)
    prompt = count_tokens(instructions or "") + _input_tokens(body.get("input"))
    return ApiRequest(
        "responses", model, stream, False, max_tokens, prompt, instructions=instructions
    )


def _input_tokens(value: object) -> int:
    """``input``: a string, or items (messages) whose ``content`` is a string or parts."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_tokens(value)
    if not isinstance(value, list):
        raise openai_api.invalid("input", "a string or an array of input items", value)
    total = 0
    for item in value:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens(part["text"])
    return total


class ResponseReply:
    """One response's identity and the bodies and events built from it."""

    def __init__(self, request: ApiRequest) -> None:
        self.request = request
        self.id = f"resp_{uuid.uuid4().hex[:16]}"  # vLLM's length
        self.item_id = f"msg_{uuid.uuid4().hex[:16]}"
        self.created_at = int(time.time())

    def response(self, tokens: int | None, limited: bool = False) -> dict[str, Any]:
        """The ``response`` object, with vLLM 0.32's fields (recorded:
        ``tests/fixtures/vllm/lora/responses.json``): ``in_progress`` with no output while
        ``tokens`` is None, else finished with ``tokens`` tokens (``incomplete`` if
        ``limited``; its message item still ``completed``, as vLLM writes it)."""
        status = "in_progress" if tokens is None else "incomplete" if limited else "completed"
        usage = None
        if tokens is not None:
            prompt = self.request.prompt_tokens
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {
                    "cached_tokens": 0,
                    "cache_write_tokens": 0,
                    "input_tokens_per_turn": [],
                    "cached_tokens_per_turn": [],
                },
                "output_tokens": tokens,
                "output_tokens_details": {
                    "reasoning_tokens": 0,
                    "tool_output_tokens": 0,
                    "output_tokens_per_turn": [],
                    "tool_output_tokens_per_turn": [],
                },
                "total_tokens": prompt + tokens,
            }
        return {
            "id": self.id,
            "created_at": self.created_at,
            "incomplete_details": {"reason": "max_output_tokens"} if limited else None,
            "instructions": self.request.instructions,
            "metadata": None,
            "model": self.request.model,
            "object": "response",
            "output": [] if tokens is None else [self.item(text(tokens), "completed")],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "none",
            "tools": [],
            "top_p": 1.0,
            "background": False,
            "max_output_tokens": self.request.max_tokens,
            "max_tool_calls": None,
            "previous_response_id": None,
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": status,
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    def item(self, content: str | None, status: str) -> dict[str, Any]:
        """The assistant ``message`` output item (no parts while ``content`` is None)."""
        parts = [] if content is None else [_part(content, None)]
        return {
            "id": self.item_id,
            "content": parts,
            "role": "assistant",
            "status": status,
            "type": "message",
            "phase": None,
        }


def _part(content: str, logprobs: list[Any] | None) -> dict[str, Any]:
    """An ``output_text`` part; vLLM writes ``logprobs: []`` when the part is added and
    ``null`` once it is done."""
    return {"annotations": [], "text": content, "type": "output_text", "logprobs": logprobs}


class ResponseEvents:
    """The SSE events of one streamed response (``sse.Events``): named by their ``type``,
    numbered by ``sequence_number`` in stream order, no ``[DONE]``."""

    named = True
    done_marker = False

    def __init__(self, reply: ResponseReply, tokens: int, limited: bool) -> None:
        self._ids: dict[str, Any] = {
            "item_id": reply.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        ids, full = self._ids, text(tokens)
        head: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": reply.response(None)}),
            ("response.in_progress", {"response": reply.response(None)}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": reply.item(None, "in_progress")},
            ),
            ("response.content_part.added", {**ids, "part": _part("", [])}),
        ]
        tail: list[tuple[str, dict[str, Any]]] = [
            ("response.output_text.done", {**ids, "text": full, "logprobs": []}),
            ("response.content_part.done", {**ids, "part": _part(full, None)}),
            (
                "response.output_item.done",
                {"output_index": 0, "item": reply.item(full, "completed")},
            ),
            # vLLM ends every stream so, the response's status saying "incomplete" if cut
            # (OpenAI's own API sends response.incomplete then, which the SDK's stream
            # helper does not accept as an end).
            ("response.completed", {"response": reply.response(tokens, limited)}),
        ]
        self.head = [_event(seq, kind, fields) for seq, (kind, fields) in enumerate(head)]
        after = len(head) + tokens  # the deltas come between
        self.tail = [_event(after + i, kind, fields) for i, (kind, fields) in enumerate(tail)]

    def token(self, index: int) -> dict[str, Any]:
        fields = {**self._ids, "delta": token(index), "logprobs": []}
        return _event(len(self.head) + index, "response.output_text.delta", fields)


def _event(seq: int, type_: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "sequence_number": seq, **fields}
