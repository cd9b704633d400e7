"""Read YAML as nodes, so every key and value still knows its line.

`yaml.safe_load` throws marks away; a rule file's errors must point at a line, so rule
files are composed into nodes and the schema walks those nodes itself. Each helper
records a `Problem` and returns None instead of raising, which lets one pass report
every mistake in a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from mlfs.policy.errors import Problem

MAX_FILE_BYTES = 4 * 1024 * 1024  # rule files are small; anything bigger is a mistake
# libyaml's parser where PyYAML was built with it: the same nodes and marks, and it
# composes the built-in rule files a mount reads at start-up about ten times faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Report:
    """Problems found in one source file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node: yaml.Node | None, message: str) -> None:
        self.problems.append(Problem(self.file, line_of(node), message))


def line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None and node.start_mark else 0


def compose_file(path: Path, report: Report) -> yaml.Node | None:
    """Compose one YAML document into a node tree; record YAML syntax errors with their line."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        report.add(None, "no such file")
        return None
    except OSError as exc:
        report.add(None, f"cannot read: {exc.strerror}")
        return None
    if len(raw) > MAX_FILE_BYTES:
        report.add(None, f"larger than {MAX_FILE_BYTES} bytes; a rule file should be small")
        return None
    return compose_text(raw, report)


def compose_text(text: bytes | str, report: Report) -> yaml.Node | None:
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        report.problems.append(Problem(report.file, line, f"bad YAML: {what}"))
        return None
    except yaml.YAMLError as exc:  # e.g. undecodable bytes: no mark to offer
        report.add(None, f"bad YAML: {' '.join(str(exc).split())}")
        return None
    except RecursionError:
        report.add(None, "bad YAML: nested too deeply")
        return None
    if node is None:
        report.add(None, "empty file; expected a mapping with 'rules' and/or 'use'")
        return None
    return node if _scalars_construct(node, report) else None


def _scalars_construct(root: yaml.Node, report: Report) -> bool:
    """Every scalar must build as safe_load would build it: a tag safe_load refuses
    (`!!python/object:...`) or a value its resolver misreads (a timestamp with month 13)
    is a problem at its line, found here once instead of raised wherever it is read."""
    ok = True
    stack = [root]
    seen: set[int] = set()  # aliases may make the node graph cyclic ("a: &x [*x]")
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                scalar(node)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
                report.add(node, f"bad value {node.value[:40]!r}: {problem}")
                ok = False
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
    return ok


def describe(node: yaml.Node) -> str:
    """Name a node's kind the way a user thinks of it, for 'expected X, got Y' messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar(node)
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} {value!r}" if not isinstance(value, bool) else f"{kind} ({value})"


def scalar(node: yaml.Node) -> Any:
    """The Python value of a node, as safe_load would build it."""
    return SafeConstructor().construct_object(node, deep=True)


def mapping(
    report: Report,
    node: yaml.Node,
    what: str,
    allowed: tuple[str, ...],
    required: tuple[str, ...] = (),
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """Keys of a mapping node → (key node, value node); unknown and missing keys are problems."""
    if not isinstance(node, yaml.MappingNode):
        report.add(node, f"{what}: expected a mapping, got {describe(node)}")
        return None
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            report.add(key_node, f"{what}: keys must be strings, got {describe(key_node)}")
            continue
        if key in out:
            report.add(key_node, f"{what}: duplicate key '{key}' (first at line {line_of(out[key][0])})")
            continue
        if key not in allowed:
            report.add(key_node, f"{what}: unknown key '{key}'; expected one of: {', '.join(allowed)}")
            continue
        out[key] = (key_node, value_node)
    missing = [k for k in required if k not in out]
    if missing:
        report.add(node, f"{what}: missing required key(s): {', '.join(missing)}")
    return out


def sequence(report: Report, node: yaml.Node, what: str) -> list[yaml.Node] | None:
    if not isinstance(node, yaml.SequenceNode):
        report.add(node, f"{what}: expected a list, got {describe(node)}")
        return None
    return list(node.value)


def string(report: Report, node: yaml.Node, what: str, choices: tuple[str, ...] = ()) -> str | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or (not value and not choices):
        report.add(node, f"{what}: expected a non-empty string, got {describe(node)}")
        return None
    if choices and value not in choices:
        report.add(node, f"{what}: expected one of {', '.join(choices)}, got {value!r}")
        return None
    return value


def boolean(report: Report, node: yaml.Node, what: str) -> bool | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        report.add(node, f"{what}: expected true or false, got {describe(node)}")
        return None
    return value


def integer(report: Report, node: yaml.Node, what: str, low: int, high: int) -> int | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        report.add(node, f"{what}: expected an integer from {low} to {high}, got {describe(node)}")
        return None
    return value


def number(report: Report, node: yaml.Node, what: str, low: float, high: float) -> float | None:
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        report.add(node, f"{what}: expected a number from {low:g} to {high:g}, got {describe(node)}")
        return None
    return float(value)


def string_list(report: Report, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]] | None:
    items = sequence(report, node, what)
    if items is None:
        return None
    out = []
    for item in items:
        value = string(report, item, f"{what} item")
        if value is not None:
            out.append((value, item))
    return out
