"""The OpenAI API as the simulated replica speaks it: request parsing and response bodies.

Pure values and functions, no I/O: the replica (``replica.py``) does the HTTP and the timing.
Shapes follow OpenAI's API reference (https://platform.openai.com/docs/api-reference):
completions, chat completions, their ``stream: true`` chunks, embeddings and the model list,
so the official ``openai`` SDK parses them. Everything generated is deterministic: token
``i`` of every response is :func:`token` ``(i)``, an input's embedding depends only on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["completion", "chat", "embedding", "responses", "messages"]

PATHS: dict[str, Kind] = {
    "/v1/completions": "completion",
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embedding",
}
"""The POST paths answered in OpenAI's Completions, Chat and Embeddings shapes, by kind
(``responses_api`` and ``anthropic_api`` add ``/v1/responses`` and ``/v1/messages``)."""

EMBEDDING_DIMENSIONS = 16
"""Length of an embedding unless the request sets ``dimensions``."""

MAX_TOKENS = 1_000_000
"""Largest ``max_tokens`` accepted (a bound, so a typo cannot hold a slot for days)."""

_WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
_PREFIX: dict[Kind, str] = {"completion": "cmpl", "chat": "chatcmpl", "embedding": "embd"}
_CHUNK_OBJECT: dict[Kind, str] = {"completion": "text_completion", "chat": "chat.completion.chunk"}


class InvalidRequest(ValueError):
    """A request body the API refuses (400): ``code`` and ``param`` go into the error body."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(str(self), self.code, self.param)


def error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` with ``type: invalid_request_error``, as OpenAI answers a 400."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return {"error": error}


def token(index: int) -> str:
    """The text of generated token ``index`` (a word with its leading space)."""
    return " " + _WORDS[index % len(_WORDS)]


def text(tokens: int) -> str:
    """The whole text of a response of ``tokens`` tokens: what the stream's deltas add up to."""
    return "".join(token(i) for i in range(tokens))


def count_tokens(value: str) -> int:
    """A deterministic token estimate for usage: one per four characters, rounded up."""
    return (len(value) + 3) // 4


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A validated OpenAI request: what the replica needs from its JSON body."""

    kind: Kind
    model: str  # the body's `model`, else the replica's first model; echoed back
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    max_tokens: int | None = None  # max_completion_tokens, else max_tokens
    prompt_tokens: int = 0
    inputs: tuple[str, ...] = ()  # embeddings: one text per input (token arrays as JSON)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int = EMBEDDING_DIMENSIONS
    instructions: str | None = None  # the Responses API's, echoed back


def parse_request(kind: Kind, raw: bytes, default_model: str) -> ApiRequest:
    """Validate a request body of ``kind``. An empty body counts as ``{}``; unknown fields are
    ignored, as servers like vLLM do, and absent ones take defaults. Raises
    :class:`InvalidRequest` for a body that is not a JSON object, or a known field of the
    wrong type or range."""
    body = json_object(raw)
    model = model_of(body, default_model)
    if kind == "embedding":
        inputs, prompt_tokens = _embedding_inputs(body.get("input"))
        encoding: Literal["float", "base64"]
        match body.get("encoding_format"):
            case None | "float":
                encoding = "float"
            case "base64":
                encoding = "base64"
            case other:
                raise invalid("encoding_format", '"float" or "base64"', other)
        dimensions = body.get("dimensions")
        dimensions = EMBEDDING_DIMENSIONS if dimensions is None else dimensions
        if not _int_in(dimensions, 1, 4096):
            raise invalid("dimensions", "an integer in [1, 4096]", dimensions)
        return ApiRequest(
            kind, model, prompt_tokens=prompt_tokens, inputs=inputs,
            encoding_format=encoding, dimensions=dimensions,
        )  # fmt: skip
    stream = optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options", "an object", options)
    include_usage = optional_bool(options or {}, "include_usage", "stream_options.")
    max_tokens = optional_max(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = optional_max(body, "max_tokens")
    if kind == "chat":
        prompt_tokens = _message_tokens(body.get("messages"))
    else:
        prompt_tokens = _prompt_tokens(body.get("prompt"))
    return ApiRequest(kind, model, stream, include_usage, max_tokens, prompt_tokens)


@dataclass(frozen=True, slots=True)
class Reply:
    """One response's identity (id, creation time) and the bodies built from it."""

    request: ApiRequest
    id: str
    created: int

    @classmethod
    def new(cls, request: ApiRequest) -> Reply:
        """A fresh id (``cmpl-…``, ``chatcmpl-…``, ``embd-…``), created now."""
        return cls(request, f"{_PREFIX[request.kind]}-{uuid.uuid4().hex}", int(time.time()))

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = self.request.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def completion(self, tokens: int, finish_reason: str) -> dict[str, Any]:
        """The non-streamed ``text_completion`` or ``chat.completion`` of ``tokens`` tokens."""
        choice: dict[str, Any] = {"index": 0}
        if self.request.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text(tokens)}
            obj = "chat.completion"
        else:
            choice["text"] = text(tokens)
            obj = "text_completion"
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        return {**self._head(obj), "choices": [choice], "usage": self.usage(tokens)}

    def chunk(
        self, content: str | None, *, role: bool = False, finish_reason: str | None = None
    ) -> dict[str, Any]:
        """A streamed chunk: ``content`` (None: an empty delta), the assistant ``role`` (chat's
        first chunk), ``finish_reason`` (the last); ``usage: null`` when usage will follow."""
        choice: dict[str, Any] = {"index": 0}
        if self.request.kind == "chat":
            delta: dict[str, str] = {"role": "assistant"} if role else {}
            if content is not None:
                delta["content"] = content
            choice["delta"] = delta
        else:
            choice["text"] = content or ""
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head(_CHUNK_OBJECT[self.request.kind]), "choices": [choice]}
        if self.request.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, tokens: int) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        head = self._head(_CHUNK_OBJECT[self.request.kind])
        return {**head, "choices": [], "usage": self.usage(tokens)}

    def embeddings(self) -> dict[str, Any]:
        """The ``list`` of one ``embedding`` per input, floats or base64 little-endian float32."""
        request = self.request
        data: list[dict[str, Any]] = []
        for index, value in enumerate(request.inputs):
            vector: list[float] | str = embedding(value, request.dimensions)
            if request.encoding_format == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                vector = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = {"prompt_tokens": request.prompt_tokens, "total_tokens": request.prompt_tokens}
        return {"object": "list", "data": data, "model": request.model, "usage": usage}

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model}


class ChunkStream:
    """The ``data:`` events of one streamed completion: :attr:`head` at once, :meth:`token`
    as each token is due, :attr:`tail` after the last (the caller adds ``[DONE]``).

    ``framed`` (a ``stream: true`` body) is OpenAI's own framing: chat opens with a role
    chunk, a chunk with an empty delta carries ``finish_reason``. Unframed (the
    ``x-sim-stream-chunks`` test header) sends exactly one event per token, the role in the
    first and ``finish_reason`` in the last, so a test can count them. Either way a usage
    chunk ends the stream when the request asked for it.
    """

    named = False
    done_marker = True

    def __init__(self, reply: Reply, tokens: int, finish_reason: str, *, framed: bool) -> None:
        self._reply, self._tokens, self._finish, self._framed = reply, tokens, finish_reason, framed
        chat = reply.request.kind == "chat"
        self.head: list[dict[str, Any]] = [reply.chunk("", role=True)] if framed and chat else []
        self.tail: list[dict[str, Any]] = []
        if framed:
            self.tail.append(reply.chunk(None, finish_reason=finish_reason))
        if reply.request.include_usage:
            self.tail.append(reply.usage_chunk(tokens))

    def token(self, index: int) -> dict[str, Any]:
        if self._framed:
            return self._reply.chunk(token(index))
        last = index == self._tokens - 1
        return self._reply.chunk(
            token(index), role=index == 0, finish_reason=self._finish if last else None
        )


MAX_MODEL_LEN = 32768
"""The context length ``GET /v1/models`` reports for a base model (the sim enforces none)."""


def models(
    names: Sequence[str], created: int, adapters: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """``GET /v1/models`` as vLLM answers it: the served (base) models, then ``adapters``
    (LoRA cards, ``parent`` naming their base)."""
    data = [model_card(n, created, root=n, parent=None, max_model_len=MAX_MODEL_LEN) for n in names]
    return {"object": "list", "data": [*data, *adapters]}


def model_card(
    name: str, created: int, *, root: str, parent: str | None, max_model_len: int | None = None
) -> dict[str, Any]:
    """One ``GET /v1/models`` entry as vLLM writes it (``ModelCard`` with one
    ``ModelPermission``, ``owned_by: vllm``)."""
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [permission],
    }


def embedding(value: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A unit vector derived from ``value``'s SHA-256 alone: the same input always embeds the
    same, different inputs almost surely differ."""
    seed = hashlib.sha256(value.encode()).digest()
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        raw += [(n / 0x7FFFFFFF) - 1.0 for n in struct.unpack(">8I", digest)]
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (empty: ``{}``); :class:`InvalidRequest` if it is
    not one."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidRequest(
            f"could not parse the request body as JSON: {exc}", "invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"the request body must be a JSON object, got {_json_type(body)}", "invalid_body"
        )
    return body


def model_of(body: dict[str, Any], default_model: str) -> str:
    """The body's ``model`` (absent: ``default_model``); :class:`InvalidRequest` unless a
    non-empty string."""
    model = body.get("model")
    if model is None:
        return default_model
    if not isinstance(model, str) or not model:
        raise invalid("model", "a non-empty string", model)
    return model


def optional_max(body: dict[str, Any], name: str) -> int | None:
    """The body's token limit ``name``, None if absent; :class:`InvalidRequest` unless an
    integer in ``[1, MAX_TOKENS]``."""
    value = body.get(name)
    if value is not None and not _int_in(value, 1, MAX_TOKENS):
        raise invalid(name, f"an integer in [1, {MAX_TOKENS}]", value)
    return value


def invalid(param: str, expected: str, got: object) -> InvalidRequest:
    """The 400 for field ``param`` that is not ``expected``."""
    return InvalidRequest(
        f"'{param}' must be {expected}, got {_json_type(got)} {json.dumps(got)[:80]}",
        "invalid_value",
        param,
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def optional_bool(body: dict[str, Any], name: str, prefix: str = "") -> bool:
    """The body's boolean ``name`` (absent or null: False); :class:`InvalidRequest` if not
    a boolean (``prefix`` goes before its name in the error)."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(prefix + name, "a boolean", value)
    return value


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(_int_in(v, 0, 2**31) for v in value)


def _prompt_tokens(prompt: object) -> int:
    """Completions' ``prompt``: a string, strings, token ids, or arrays of token ids."""
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if _is_token_ids(prompt):
        assert isinstance(prompt, list)
        return len(prompt)
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return sum(count_tokens(p) for p in prompt)
    if isinstance(prompt, list) and all(_is_token_ids(p) for p in prompt):
        return sum(len(p) for p in prompt)
    raise invalid("prompt", "a string, an array of strings or of token ids", prompt)


def _message_tokens(messages: object) -> int:
    """Chat's ``messages``: objects whose ``content`` is a string or an array of parts."""
    if messages is None:
        return 0
    if not isinstance(messages, list):
        raise invalid("messages", "an array of message objects", messages)
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", "a message object", message)
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens(part["text"])
        elif content is not None:
            raise invalid(f"messages[{i}].content", "a string or an array of parts", content)
    return total


def _embedding_inputs(value: object) -> tuple[tuple[str, ...], int]:
    """Embeddings' ``input``: the texts to embed and their token count. Absent, it is the
    empty string (lenient, like absent ``messages`` or ``prompt``: routing tests send any
    body to any path)."""
    if value is None:
        return ("",), 0
    if isinstance(value, str):
        return (value,), count_tokens(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return tuple(value), sum(count_tokens(v) for v in value)
        if _is_token_ids(value):
            return (json.dumps(value),), len(value)
        if all(_is_token_ids(v) and v for v in value):
            return tuple(json.dumps(v) for v in value), sum(len(v) for v in value)
    raise invalid("input", "a string, a non-empty array of strings or of token ids", value)
