"""OpenAI chat-completions request bodies of an exact size, and the raw HTTP/1.1 requests
that carry them (pure: no I/O), for the body-routing benchmark.

The body is what the ``openai`` SDK sends for ``client.chat.completions.create(messages=...,
model=...)``: a compact JSON object whose keys follow the call's parameters, so ``model``
comes *after* ``messages`` (a parser must read past the whole prompt to find it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

_WORDS = [
    "the", "model", "reads", "every", "token", "of", "prompt", "before", "it", "answers",
    "so", "a", "long", "context", "costs", "time", "on", "GPU", "and", "bytes", "wire",
    "summarise", "compare", "explain", "list", "translate", "table", "request", "replica",
    "latency", "throughput", "queue", "slot", "warm", "cold", "batch", "cache", "kernel",
]  # fmt: skip
SYSTEM_PROMPT = "You are a helpful assistant."


def prompt_text(chars: int, rng: random.Random) -> str:
    """About ``chars`` characters of English-like text in sentences and paragraphs, with the
    characters JSON must escape (newlines, quotes) that real prompts contain."""
    out: list[str] = []
    length = 0
    while length < chars:
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18)))
        if rng.random() < 0.1:
            sentence = f'"{sentence}"'
        sentence = sentence[0].upper() + sentence[1:] + "."
        sep = "\n\n" if rng.random() < 0.15 else " "
        out.append(sentence + sep)
        length += len(sentence) + len(sep)
    return "".join(out)


def _encode(prompt: str, model: str, stream: bool | None) -> bytes:
    body: dict[str, object] = {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
        "model": model,
    }
    if stream is not None:
        body["stream"] = stream
    # httpx (the SDK's transport) serialises compactly, non-ASCII as is.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def chat_body(size: int, model: str, *, seed: int = 0, stream: bool | None = None) -> bytes:
    """A chat-completions JSON body of exactly ``size`` bytes (the user prompt is padded or
    trimmed to fit); ``stream`` is left out when None, as the SDK leaves it out."""
    overhead = len(_encode("", model, stream))
    if size < overhead:
        raise ValueError(f"a body for model {model!r} needs at least {overhead} bytes")
    prompt = prompt_text(size - overhead, random.Random(seed))
    body = _encode(prompt, model, stream)
    while len(body) > size:  # escapes make the encoding longer than the text: trim
        excess = len(body) - size
        prompt = prompt[: len(prompt) - max(1, excess // 2)]
        body = _encode(prompt, model, stream)
    if len(body) < size:
        prompt += "." * (size - len(body))
        body = _encode(prompt, model, stream)
    assert len(body) == size
    return body


def post_request(
    host: str,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A raw HTTP/1.1 keep-alive POST of a JSON ``body`` with extra ``headers``."""
    head = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json"]
    head += [f"{k}: {v}" for k, v in headers]
    head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def size_label(size: int) -> str:
    """``1 KB``, ``200 KB`` (KB = 1024 bytes), or bytes below 1 KB."""
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KB"
    return f"{size} B"
