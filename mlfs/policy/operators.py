"""Condition operators, registered by name, each compiled once into a predicate.

Compiling at load time is what lets a bad regex or a size like '12 parsecs' fail with
its line number, and keeps `decide()` to a few Python calls per condition.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from mlfs.policy.context import BYTES, NAME, NUMBER, TEXT, Property
from mlfs.policy.units import parse_size

Predicate = Callable[[Any], bool]

_COMPARE = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
            "gt": operator.gt, "ge": operator.ge}
OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "glob", "regex", "contains")
OPERATORS_BY_KIND = {
    TEXT: ("eq", "ne", "in", "glob", "regex", "contains"),
    NAME: ("eq", "ne", "in"),
    BYTES: ("eq", "ne", "lt", "le", "gt", "ge", "in"),
    NUMBER: ("eq", "ne", "lt", "le", "gt", "ge", "in"),
}


def compile_condition(prop: Property, op: str, value: Any) -> Predicate:
    """A predicate on the property's value; ValueError says what the value should have been."""
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")
    allowed = OPERATORS_BY_KIND[prop.kind]
    if op not in allowed:
        raise ValueError(f"operator {op!r} does not apply to {prop.name}; use one of {', '.join(allowed)}")
    if op == "in":
        if not isinstance(value, list) or not value:
            raise ValueError(f"operator 'in' needs a non-empty list of values for {prop.name}")
        members = frozenset(_operand(prop, v) for v in value)
        return lambda actual: actual in members
    if op == "regex":
        pattern = _text(prop, value)
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        return lambda actual: rx.search(actual) is not None
    if op == "glob":
        rx = glob_regex(_text(prop, value))
        if "/" in value:
            return lambda actual: rx.fullmatch(actual) is not None
        # A pattern without '/' names a file anywhere, as in .gitignore.
        return lambda actual: rx.fullmatch(actual.rsplit("/", 1)[-1]) is not None
    if op == "contains":
        needle = _text(prop, value)
        return lambda actual: needle in actual
    want = _operand(prop, value)
    compare = _COMPARE[op]
    return lambda actual: compare(actual, want)


def _operand(prop: Property, value: Any) -> Any:
    if prop.kind == BYTES:
        return parse_size(value)
    if prop.kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{prop.name} compares with a number, got {value!r}")
        return value
    text = _text(prop, value)
    if prop.kind == NAME and text not in prop.choices:
        raise ValueError(f"{prop.name} is one of {', '.join(prop.choices)}; got {text!r}")
    if prop.name == "file.extension" and text and not text.startswith("."):
        raise ValueError(f"file.extension values start with a dot, like '.{text}'")
    return text


def _text(prop: Property, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{prop.name} compares with a string, got {value!r}")
    return value


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Path glob: '*' and '?' stay within one path component, '**' crosses them."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f"bad glob {pattern!r}: '[' without a closing ']'")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))
