"""Load order: built-in defaults < framework plugins < environment < user rule files.

Each layer's rules replace earlier rules with the same id (so a user file can change
or switch off any built-in rule by id). Within one file, the rules of the templates
it `use`s come first and its own rules after. Two enabled rules of one file with the
same priority that set the same action are a clash: which one wins would depend on
the order of lines, so it is reported instead of guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlfs.manifest.model import Manifest
from mlfs.policy import builtin
from mlfs.policy.errors import Problem, RuleError
from mlfs.policy.model import PinBudget, Rule, RuleFile, Use
from mlfs.policy.parse import parse_rule_file
from mlfs.policy.plugins import detect_plugins
from mlfs.policy.templates import TemplateLibrary
from mlfs.policy.units import format_size


@dataclass(frozen=True)
class RuleSet:
    """The merged result of all layers, ready for decisions. Immutable, so it can be swapped."""

    rules: tuple[Rule, ...]  # enabled rules in decision order: priority, then later layer first
    pin_budget: int | None  # bytes the mount may pin; None = not limited by the rules
    layers: tuple[str, ...]  # what was loaded, in load order, for explain and logs
    switched_off: tuple[str, ...] = ()  # ids switched off by a later layer


def load_ruleset(
    manifest: Manifest | None,
    user_files: Sequence[str | Path] = (),
    env: str | None = None,
    templates: Sequence[str] = (),
    store_size: int | None = None,
    base: Path | None = None,
) -> RuleSet:
    """Load and merge every layer; raise RuleError listing every problem found."""
    problems: list[Problem] = []
    base = base or builtin.rules_dir()
    library = builtin.load_library(base, problems)
    known_ids = {r.id for name in library.names() for r in library.get(name).rules}  # type: ignore[union-attr]
    merged: dict[str, Rule] = {}
    layers: list[str] = []
    budget: PinBudget | None = None

    def add(rules: Iterable[Rule], layer: str) -> None:
        for rule in rules:
            if rule.is_switch_off and rule.id not in merged and rule.id not in known_ids:
                file, line = _where(rule.origin)
                problems.append(Problem(file, line, f"rule '{rule.id}' is switched off, but no rule has that id"))
            merged.pop(rule.id, None)
            merged[rule.id] = dataclasses.replace(rule, layer=layer)
            known_ids.add(rule.id)

    defaults = base / builtin.DEFAULTS_FILE
    parsed = _parse(defaults, problems)
    if parsed is not None:
        add(_file_rules(parsed, library, problems), "built-in")
        budget = parsed.pin_budget or budget
        layers.append(f"built-in: {defaults}")

    if manifest is not None:
        for plugin in detect_plugins(manifest):
            add(library.expand(plugin.uses(), problems), f"plugin {plugin.name}")
            layers.append(f"plugin {plugin.name}: {', '.join(plugin.templates)}")

    if env:
        env_file = base / builtin.ENV_DIR / f"{env}.yaml"
        if not env_file.is_file():
            known = ", ".join(builtin.env_names(base)) or "none"
            problems.append(Problem("MLFS_ENV", 0, f"no environment {env!r}; known: {known}"))
        else:
            parsed = _parse(env_file, problems)
            if parsed is not None:
                add(_file_rules(parsed, library, problems), f"env {env}")
                budget = parsed.pin_budget or budget
                layers.append(f"env {env}: {env_file}")

    if templates:
        add(library.expand([Use(t, "--template", 0) for t in templates], problems), "user")
        layers.append(f"user templates: {', '.join(templates)}")
    for path in user_files:
        parsed = _parse(Path(path), problems)
        if parsed is not None:
            add(_file_rules(parsed, library, problems), "user")
            budget = parsed.pin_budget or budget
            layers.append(f"user: {path}")

    pin_budget = None
    if budget is not None:
        pin_budget = budget.resolve(store_size)
        if store_size is not None and pin_budget is not None and pin_budget > store_size:
            problems.append(Problem(budget.file, budget.line,
                                    f"pin_budget {format_size(pin_budget)} is above the chunk store size "
                                    f"{format_size(store_size)}"))
    if problems:
        raise RuleError(_unique(problems))
    active = [r for r in merged.values() if r.enabled]
    order = {r.id: i for i, r in enumerate(merged.values())}
    # Higher priority first; on a tie between layers, the later layer (and line) first.
    active.sort(key=lambda r: (-r.priority, -order[r.id]))
    return RuleSet(
        rules=tuple(active),
        pin_budget=pin_budget,
        layers=tuple(layers),
        switched_off=tuple(r.id for r in merged.values() if not r.enabled),
    )


def _parse(path: Path, problems: list[Problem]) -> RuleFile | None:
    parsed, report = parse_rule_file(path)
    problems.extend(report.problems)
    return parsed


def _file_rules(parsed: RuleFile, library: TemplateLibrary, problems: list[Problem]) -> list[Rule]:
    """One file's contribution: used templates' rules, then its own; checked for clashes."""
    local = library.with_local(parsed.templates, problems)
    local.check_all(problems, [t.name for t in parsed.templates if local.get(t.name) is t])
    merged: dict[str, Rule] = {}
    for rule in (*local.expand(parsed.uses, problems), *parsed.rules):
        merged.pop(rule.id, None)
        merged[rule.id] = rule
    rules = list(merged.values())
    problems.extend(find_clashes(rules))
    return rules


def find_clashes(rules: Sequence[Rule]) -> list[Problem]:
    """Same priority + same action in one scope: report at the later rule."""
    out: list[Problem] = []
    seen: list[Rule] = []
    for rule in rules:
        if not rule.enabled:
            continue
        for other in seen:
            common = sorted(set(rule.actions) & set(other.actions))
            if other.priority == rule.priority and common:
                file, line = _where(rule.origin)
                out.append(Problem(file, line,
                                   f"priority clash: rule '{rule.id}' and rule '{other.id}' ({other.origin}) "
                                   f"both have priority {rule.priority} and both set {', '.join(common)}; "
                                   f"give one a different priority"))
                break
        seen.append(rule)
    return out


def _where(origin: str) -> tuple[str, int]:
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if line.isdigit() else (origin, 0)


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
