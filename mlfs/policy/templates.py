"""Templates: named bundles of rules that rule files (and plugins) include with `use:`.

A template may itself `use` other templates; expansion is depth-first, each template's
used templates first, then its own rules, and a later rule with the same id replaces
an earlier one. A cycle (a uses b uses a) is an error at the `use` entry closing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mlfs.policy.errors import Problem
from mlfs.policy.model import Rule, Template, Use


class TemplateLibrary:
    """Templates by name; built-in ones plus those defined in the files being loaded."""

    def __init__(self, templates: Iterable[Template] = ()) -> None:
        self._by_name: dict[str, Template] = {}
        for t in templates:
            self._by_name[t.name] = t

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Template | None:
        return self._by_name.get(name)

    def with_local(self, templates: Iterable[Template], problems: list[Problem]) -> TemplateLibrary:
        """A library that also knows a file's own templates; redefining a known name is a problem."""
        out = TemplateLibrary(self._by_name.values())
        for t in templates:
            known = self._by_name.get(t.name)
            if known is not None and _same_file(known.file, t.file):
                continue  # validating a built-in template file: it is already known
            if known is not None:
                problems.append(Problem(t.file, t.line,
                                        f"template '{t.name}' is already defined at {known.file}:{known.line}"))
                continue
            out._by_name[t.name] = t
        return out

    def check_all(self, problems: list[Problem], names: Iterable[str] | None = None) -> None:
        """Expand every template (or the named ones) once, so unused cycles are found too."""
        for name in self.names() if names is None else names:
            t = self._by_name[name]
            self.expand([Use(name, t.file, t.line)], problems)

    def expand(self, uses: Iterable[Use], problems: list[Problem]) -> list[Rule]:
        """Rules of the used templates, in order, later ids replacing earlier ones."""
        merged: dict[str, Rule] = {}
        for use in uses:
            self._expand_one(use, (), merged, problems)
        return list(merged.values())

    def _expand_one(self, use: Use, stack: tuple[str, ...], merged: dict[str, Rule],
                    problems: list[Problem]) -> None:
        if use.name in stack:
            cycle = " -> ".join((*stack[stack.index(use.name):], use.name))
            problems.append(Problem(use.file, use.line, f"template cycle: {cycle}"))
            return
        template = self._by_name.get(use.name)
        if template is None:
            known = ", ".join(self.names()) or "none"
            problems.append(Problem(use.file, use.line, f"unknown template '{use.name}'; known: {known}"))
            return
        for inner in template.uses:
            self._expand_one(inner, (*stack, use.name), merged, problems)
        for rule in template.rules:
            merged.pop(rule.id, None)  # re-insert so the later definition also takes the later place
            merged[rule.id] = rule


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b
