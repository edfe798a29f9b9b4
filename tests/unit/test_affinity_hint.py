"""The prompt a request's affinity hint hashes, read from OpenAI/Anthropic-style bodies
(``warmroute.request.prompt``), and the hint the director makes of it
(``warmroute.director.pricing.hint``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from warmroute.director import pricing
from warmroute.request.prompt import prompt_text
from warmroute.request.source import PickedRequest
from warmroute.state.affinity import Affinity, AffinitySpec, prompt_blocks

SPEC = AffinitySpec(block_chars=8, max_blocks=100, session_header="x-session-id")


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


class _Session(PickedRequest):
    """A picker's request whose session header is ``session``."""

    def __init__(self, session: str, body: bytes) -> None:
        super().__init__(None, body)
        self.session = session

    def header(self, name: str) -> str | None:
        return self.session if name == SPEC.session_header and self.session else None


def hint(spec: AffinitySpec, session: str, body: bytes) -> Affinity | None:
    return pricing.hint(spec, _Session(session, body))


def test_chat_messages_in_order_with_roles_and_content_parts() -> None:
    body = _body(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
                },
            ]
        }
    )
    assert prompt_text(body, 1000) == "system\nbe brief\nuser\nhi there\n"


def test_completion_prompt_anthropic_system_and_responses_input() -> None:
    assert prompt_text(_body({"prompt": "once upon"}), 1000) == "once upon"
    assert prompt_text(_body({"system": "S", "messages": []}), 1000) == "system\nS\n"
    assert prompt_text(_body({"input": "abc"}), 1000) == "abc"
    assert prompt_text(_body({"input": [{"role": "user", "content": "q"}]}), 1000) == "user\nq\n"
    assert prompt_text(_body({"prompt": [1, 2, 3]}), 1000) == "123"


def test_not_json_or_no_prompt_gives_nothing() -> None:
    assert prompt_text(b"\xff not json", 100) == ""
    assert prompt_text(b"[1, 2]", 100) == ""
    assert prompt_text(_body({"model": "m"}), 100) == ""
    assert hint(SPEC, "", b"garbage") is None
    assert hint(SPEC, "", _body({"prompt": "short"})) is None  # under one block


def test_hint_has_session_and_blocks() -> None:
    got = hint(SPEC, "s1", _body({"prompt": "a" * 20}))
    assert got is not None
    assert got.session == "s1"
    assert got.blocks == prompt_blocks("a" * 20, 8, 100)
    no_prompt_hashing = AffinitySpec(block_chars=0, session_header=SPEC.session_header)
    only_session = hint(no_prompt_hashing, "s1", _body({"prompt": "a" * 20}))
    assert only_session is not None and only_session.blocks == ()


@given(st.text(min_size=1, max_size=300), st.text(max_size=100), st.text(max_size=100))
def test_same_system_prompt_shares_leading_blocks(system: str, q1: str, q2: str) -> None:
    def blocks(q: str) -> tuple[int, ...]:
        doc = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
        found = hint(SPEC, "", _body(doc))
        return () if found is None else found.blocks

    shared = len("system\n" + system + "\n") // SPEC.block_chars
    assert blocks(q1)[:shared] == blocks(q2)[:shared]


def test_prompt_is_cut_at_the_limit() -> None:
    assert len(prompt_text(_body({"prompt": "x" * 5000}), 64)) == 64
