"""Label and field selectors, with the grammar and matching rules of ``k8s.io/apimachinery``.

Label selectors (``labels.Parse``): comma-separated requirements, each one of
``k``, ``!k`` (exists / does not exist), ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k>n``, ``k<n``. ``!=`` and ``notin`` also match objects without the
label. An empty selector matches everything. Field selectors (``fields.ParseSelector``):
``f=v``, ``f==v``, ``f!=v`` over a per-resource set of supported fields.

Both parse to immutable values; parse errors raise ``ValueError`` (the server answers 400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(
    r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SPECIAL = "!=(),<>"
_OPERATORS = frozenset({"!", "=", "==", "!=", "(", ")", ",", "<", ">"})


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement: ``op`` is one of ``exists``, ``!``, ``=``, ``!=``, ``in``,
    ``notin``, ``>``, ``<``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == ">" else number < bound


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)


def _lex(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith(("==", "!="), i):
            tokens.append(text[i : i + 2])
            i += 2
        elif ch in _SPECIAL:
            tokens.append(ch)
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        tok = self.peek()
        self.pos += 1
        return tok

    def ident(self, what: str) -> str:
        tok = self.take()
        if tok is None or tok in _OPERATORS:
            raise ValueError(f"found '{tok or ''}', expected: {what}")
        return tok

    def key(self) -> str:
        key = self.ident("identifier")
        if not _KEY.match(key):
            raise ValueError(f"invalid label key {key!r}")
        return key

    def value(self) -> str:
        tok = self.peek()
        value = "" if tok in (None, ",", ")") else self.ident("value")
        if not _VALUE.match(value):
            raise ValueError(f"invalid label value: {value!r}")
        return value

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), "!")
        key = self.key()
        op = self.peek()
        if op in (None, ","):
            return Requirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            return Requirement(key, "!=" if op == "!=" else "=", (self.value(),))
        if op in (">", "<"):
            bound = self.ident("integer")
            if not bound.lstrip("-").isdigit():
                raise ValueError(f"for 'Gt', 'Lt' operators, the value must be an integer: {bound}")
            return Requirement(key, op, (bound,))
        if op in ("in", "notin"):
            if self.take() != "(":
                raise ValueError("expected: '('")
            values = [self.value()]
            while self.peek() == ",":
                self.take()
                values.append(self.value())
            if self.take() != ")":
                raise ValueError("expected: ')'")
            return Requirement(key, op, tuple(values))
        raise ValueError(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")


def parse_labels(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query value; raises ``ValueError`` when malformed."""
    parser = _Parser(text or "")
    requirements: list[Requirement] = []
    while parser.peek() is not None:
        try:
            requirements.append(parser.requirement())
        except ValueError as exc:
            raise ValueError(f"unable to parse requirement: {exc}") from exc
        sep = parser.take()
        if sep not in (None, ","):
            raise ValueError(f"unable to parse requirement: found '{sep}', expected: ','")
    return LabelSelector(tuple(requirements))


FieldGetter = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str, FieldGetter], ...] = ()  # (field, negated, value, get)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((get(obj) == value) != negated for _, negated, value, get in self.terms)


def parse_fields(text: str | None, supported: Mapping[str, FieldGetter]) -> FieldSelector:
    """Parse a ``fieldSelector``; unsupported fields raise ``ValueError`` like the server's
    ``field label not supported``."""
    terms: list[tuple[str, bool, str, FieldGetter]] = []
    for part in re.split(r"(?<!\\),", text or ""):
        if not part.strip():
            continue
        match = re.match(r"^\s*([^!=\s]+)\s*(==|=|!=)(.*)$", part)
        if not match:
            raise ValueError(f"invalid selector: '{part}'; can't understand '{part}'")
        field, op, value = match.group(1), match.group(2), match.group(3).strip()
        if field not in supported:
            raise ValueError(f'field label not supported: "{field}"')
        value = value.replace("\\,", ",").replace("\\=", "=").replace("\\\\", "\\")
        terms.append((field, op == "!=", value, supported[field]))
    return FieldSelector(tuple(terms))
