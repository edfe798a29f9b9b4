"""Reading a config: YAML text or file to a validated ``Config``, and every validation error
turned into one line naming the key path, its line in the file and what was expected.

``load``, ``parse`` and ``enable_epp`` raise ``ConfigError``, never pydantic's or YAML's
errors; the loader is the only place those are translated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from warmroute.config._root import Config
from warmroute.errors import ConfigError


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file. Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from exc
    return parse(text, str(path))


def parse(text: str, source: str = "<config>") -> Config:
    """Validate YAML text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"not valid YAML{where}: {problem}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, got {_kind(data)}"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, node) for e in exc.errors()]) from exc


def default() -> Config:
    """The built-in config ``warmroute up`` uses when given none."""
    text = resources.files("warmroute.defaults").joinpath("demo.yaml").read_text()
    return parse(text, "<built-in demo config>")


def enable_epp(cfg: Config, source: str = "<config>") -> Config:
    """``cfg`` in endpoint picker mode (``serve --epp``), validated again: ConfigError if,
    say, ``epp.pool`` is needed and unset."""
    if cfg.epp.enabled:
        return cfg
    data = cfg.model_dump()
    data["epp"]["enabled"] = True
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e, None) for e in exc.errors()]) from exc


def _describe(error: Mapping[str, Any], root: yaml.Node | None) -> str:
    loc: Sequence[str | int] = error.get("loc", ())
    # Pydantic adds validator names ('function-after[...]') and union member tags ('int',
    # 'str', 'list[...]') to loc; they are not keys of the file.
    loc = [p for p in loc if isinstance(p, int) or not _is_pydantic_tag(p)]
    at = (error.get("ctx") or {}).get("at")
    if at:
        loc = [*loc, *at]
    key = _format_loc(loc) or "(top level)"
    line = _line_of(root, loc)
    where = f" (line {line})" if line else ""
    msg = str(error.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if error.get("type") == "extra_forbidden":
        msg = "unknown key (check the spelling; see `warmroute config example`)"
    elif error.get("type") == "missing":
        msg = "required key is missing"
    elif "input" in error and error.get("type") not in (
        "value_error",
        "assertion_error",
        "located",
    ):
        msg = f"{msg}; got {error['input']!r}"
    return f"{key}{where}: {msg}"


_PYDANTIC_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "literal"})


def _is_pydantic_tag(part: str) -> bool:
    return part in _PYDANTIC_TAGS or "[" in part or part.startswith("function-")


def _format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the deepest YAML node along ``loc``."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            key = next((k for k, _ in node.value if k.value == part), None)
            if child is None:
                return line
            line = (key or child).start_mark.line + 1
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def example() -> str:
    """The documented example config (the built-in demo)."""
    return resources.files("warmroute.defaults").joinpath("demo.yaml").read_text()
