"""A request's prompt, as a model server's prefix cache sees it, read from its JSON body.

In order: the system prompt (Anthropic's ``system``), then the chat ``messages`` (role
and text of each), else the completion ``prompt``, else the Responses API ``input``.
A body that is not JSON, or has no prompt, has an empty one. The director hashes it into
an affinity hint (``warmroute.director``) in pools with ``policy: prefix_affinity`` only;
both front ends read it through their request source (``warmroute.request.source``): the
endpoint picker has the body anyway, the own-Envoy processor asks Envoy for it for those
pools only.
"""

from __future__ import annotations

import json
from typing import Any


def prompt_text(body: bytes | bytearray, limit: int) -> str:
    """The prompt of an OpenAI/Anthropic-style JSON body, at most ``limit`` characters
    (only leading blocks are hashed); "" if there is none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts: list[str] = []
    size = 0
    for piece in _pieces(doc):
        parts.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def _pieces(doc: dict[str, Any]) -> list[str]:
    out: list[str] = []
    system = doc.get("system")
    if system is not None:
        out.append(f"system\n{_text(system)}\n")
    messages = doc.get("messages")
    if isinstance(messages, list):
        out.extend(_message(m) for m in messages)
    elif (prompt := doc.get("prompt")) is not None:
        out.append(_text(prompt))
    elif (given := doc.get("input")) is not None:
        if isinstance(given, list) and all(isinstance(m, dict) for m in given):
            out.extend(_message(m) for m in given)
        else:
            out.append(_text(given))
    return out


def _message(message: object) -> str:
    if not isinstance(message, dict):
        return _text(message)
    role = message.get("role")
    return f"{role if isinstance(role, str) else ''}\n{_text(message.get('content'))}\n"


def _text(value: object) -> str:
    """Strings as they are; content parts by their text; anything else as compact JSON
    (token arrays, tool calls): stable, so equal prompts still hash equal."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else _text(part)
            for part in value
        )
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
