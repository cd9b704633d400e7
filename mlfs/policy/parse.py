"""Parse one rule file into a `RuleFile`, collecting every problem with its line.

Format (see rules/README.md for the full description):

    version: 1                  # optional; the only version is 1
    description: text           # optional
    use: [llm-inference]        # templates whose rules this file includes
    pin_budget: 2GiB | "25%"    # optional; bytes or share of the chunk store
    templates:                  # optional: templates defined here, by name
      my-template: {description: ..., use: [...], rules: [...]}
    rules:
      - id: small-configs
        description: ...
        priority: 100           # higher decides first
        enabled: true           # optional
        threshold: 1.0          # optional: share of condition weight that must match
        conditions:
          - {property: file.size, operator: lt, value: 1MiB, weight: 1}
        actions: {prefetch: {when: mount}, pin: true, cache: high}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlfs.policy import yamlsrc
from mlfs.policy.actions import ACTIONS, Action, Cache, Pin
from mlfs.policy.context import PROPERTIES
from mlfs.policy.model import Condition, PinBudget, Rule, RuleFile, Template, Use
from mlfs.policy.operators import OPERATORS, compile_condition
from mlfs.policy.units import parse_size
from mlfs.policy.yamlsrc import Report

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
_TOP_KEYS = ("version", "description", "use", "pin_budget", "templates", "rules")
_TEMPLATE_KEYS = ("description", "use", "rules")
_RULE_KEYS = ("id", "description", "priority", "enabled", "threshold", "conditions", "actions")
_CONDITION_KEYS = ("property", "operator", "value", "weight")
MAX_PRIORITY = 1000
MAX_WEIGHT = 1000.0


def parse_rule_file(path: str | Path, report: Report | None = None) -> tuple[RuleFile | None, Report]:
    """Parse a file; the RuleFile is None when the file is not even a YAML mapping."""
    report = report or Report(str(path))
    node = yamlsrc.compose_file(Path(path), report)
    return (None if node is None else _Parser(report).rule_file(node)), report


def parse_rule_text(text: str, name: str = "<rules>") -> tuple[RuleFile | None, Report]:
    report = Report(name)
    node = yamlsrc.compose_text(text, report)
    return (None if node is None else _Parser(report).rule_file(node)), report


class _Parser:
    def __init__(self, report: Report) -> None:
        self.report = report

    def origin(self, node: yaml.Node) -> str:
        return f"{self.report.file}:{yamlsrc.line_of(node)}"

    def rule_file(self, node: yaml.Node) -> RuleFile | None:
        keys = yamlsrc.mapping(self.report, node, "rule file", _TOP_KEYS)
        if keys is None:
            return None
        if "version" in keys:
            yamlsrc.integer(self.report, keys["version"][1], "version", 1, 1)
        description = self.description(keys)
        uses = self.uses(keys)
        pin_budget = self.pin_budget(keys["pin_budget"][1]) if "pin_budget" in keys else None
        templates: list[Template] = []
        if "templates" in keys:
            templates = self.templates(keys["templates"][1])
        rules = self.rules(keys["rules"][1], "rules") if "rules" in keys else []
        return RuleFile(
            path=self.report.file,
            description=description,
            uses=tuple(uses),
            templates=tuple(templates),
            rules=tuple(rules),
            pin_budget=pin_budget,
        )

    def description(self, keys: dict[str, tuple[yaml.Node, yaml.Node]]) -> str:
        if "description" not in keys:
            return ""
        return yamlsrc.string(self.report, keys["description"][1], "description") or ""

    def uses(self, keys: dict[str, tuple[yaml.Node, yaml.Node]]) -> list[Use]:
        if "use" not in keys:
            return []
        names = yamlsrc.string_list(self.report, keys["use"][1], "use") or []
        return [Use(name, self.report.file, yamlsrc.line_of(n)) for name, n in names]

    def pin_budget(self, node: yaml.Node) -> PinBudget | None:
        value = yamlsrc.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        line = yamlsrc.line_of(node)
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                percent = -1.0
            if not 0 < percent <= 100:
                self.report.add(node, f"pin_budget: a share must be between 0% and 100%, got {value!r}")
                return None
            return PinBudget(None, percent / 100, self.report.file, line)
        try:
            return PinBudget(parse_size(value), None, self.report.file, line)
        except ValueError as exc:
            self.report.add(node, f"pin_budget: {exc} (or a share of the store like '25%')")
            return None

    def templates(self, node: yaml.Node) -> list[Template]:
        if not isinstance(node, yaml.MappingNode):
            self.report.add(node, f"templates: expected a mapping of name to template, got {yamlsrc.describe(node)}")
            return []
        out: list[Template] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            name = yamlsrc.string(self.report, key_node, "template name")
            if name is None:
                continue
            if not _NAME.match(name):
                self.report.add(key_node, f"template name {name!r}: use lower-case letters, digits, '.', '_' or '-'")
                continue
            if name in seen:
                self.report.add(key_node, f"template '{name}' is defined twice in this file")
                continue
            seen.add(name)
            keys = yamlsrc.mapping(self.report, value_node, f"template '{name}'", _TEMPLATE_KEYS)
            if keys is None:
                continue
            rules = self.rules(keys["rules"][1], f"template '{name}' rules") if "rules" in keys else []
            out.append(Template(
                name=name,
                description=self.description(keys),
                uses=tuple(self.uses(keys)),
                rules=tuple(rules),
                file=self.report.file,
                line=yamlsrc.line_of(key_node),
            ))
        return out

    def rules(self, node: yaml.Node, what: str) -> list[Rule]:
        items = yamlsrc.sequence(self.report, node, what)
        if items is None:
            return []
        out: list[Rule] = []
        lines: dict[str, int] = {}
        for item in items:
            rule = self.rule(item)
            if rule is None:
                continue
            if rule.id in lines:
                self.report.add(item, f"rule '{rule.id}' is defined twice (first at line {lines[rule.id]})")
                continue
            lines[rule.id] = yamlsrc.line_of(item)
            out.append(rule)
        return out

    def rule(self, node: yaml.Node) -> Rule | None:
        keys = yamlsrc.mapping(self.report, node, "rule", _RULE_KEYS, required=("id",))
        if keys is None or "id" not in keys:
            return None
        before = len(self.report.problems)
        rule_id = yamlsrc.string(self.report, keys["id"][1], "rule id")
        if rule_id is not None and not _NAME.match(rule_id):
            self.report.add(keys["id"][1], f"rule id {rule_id!r}: use lower-case letters, digits, '.', '_' or '-'")
        what = f"rule '{rule_id}'"
        enabled = True
        if "enabled" in keys:
            enabled = yamlsrc.boolean(self.report, keys["enabled"][1], f"{what} enabled") is not False
        description = self.description(keys)
        if not enabled and set(keys) <= {"id", "enabled", "description"}:
            # A switch-off: names an earlier layer's rule, carries nothing else.
            if len(self.report.problems) > before or rule_id is None:
                return None
            return Rule(id=rule_id, priority=0, enabled=False, description=description, origin=self.origin(node))
        missing = [k for k in ("priority", "actions") if k not in keys]
        if missing:
            self.report.add(node, f"{what}: missing required key(s): {', '.join(missing)}")
            return None
        priority = yamlsrc.integer(self.report, keys["priority"][1], f"{what} priority", -MAX_PRIORITY, MAX_PRIORITY)
        threshold = 1.0
        if "threshold" in keys:
            value = yamlsrc.number(self.report, keys["threshold"][1], f"{what} threshold", 0.0, 1.0)
            if value == 0.0:
                self.report.add(keys["threshold"][1], f"{what} threshold: must be above 0 (0 would match every file)")
            threshold = value or 1.0
        conditions = []
        if "conditions" in keys:
            for cnode in yamlsrc.sequence(self.report, keys["conditions"][1], f"{what} conditions") or []:
                cond = self.condition(cnode, what)
                if cond is not None:
                    conditions.append(cond)
        actions = self.actions(keys["actions"][1], what)
        if len(self.report.problems) > before or rule_id is None or priority is None:
            return None
        return Rule(
            id=rule_id,
            priority=priority,
            actions=actions,
            conditions=tuple(conditions),
            description=description,
            enabled=enabled,
            threshold=threshold,
            origin=self.origin(node),
        )

    def condition(self, node: yaml.Node, what: str) -> Condition | None:
        keys = yamlsrc.mapping(self.report, node, f"{what} condition", _CONDITION_KEYS,
                               required=("property", "operator", "value"))
        if keys is None or not {"property", "operator", "value"} <= set(keys):
            return None
        prop_name = yamlsrc.string(self.report, keys["property"][1], f"{what} condition property")
        op = yamlsrc.string(self.report, keys["operator"][1], f"{what} condition operator")
        weight = 1.0
        if "weight" in keys:
            weight = yamlsrc.number(self.report, keys["weight"][1], f"{what} condition weight", 0.0, MAX_WEIGHT)
            if weight == 0.0:
                self.report.add(keys["weight"][1], f"{what} condition weight: must be above 0")
                return None
        if prop_name is None or op is None or weight is None:
            return None
        prop = PROPERTIES.get(prop_name)
        if prop is None:
            self.report.add(keys["property"][1],
                            f"{what}: unknown property {prop_name!r}; expected one of {', '.join(PROPERTIES)}")
            return None
        if op not in OPERATORS:
            self.report.add(keys["operator"][1],
                            f"{what}: unknown operator {op!r}; expected one of {', '.join(OPERATORS)}")
            return None
        value_node = keys["value"][1]
        value: Any = yamlsrc.scalar(value_node)
        try:
            test = compile_condition(prop, op, value)
        except ValueError as exc:
            self.report.add(value_node, f"{what}: {exc}")
            return None
        return Condition(property=prop_name, operator=op, value=value, weight=weight, test=test)

    def actions(self, node: yaml.Node, what: str) -> dict[str, Action]:
        keys = yamlsrc.mapping(self.report, node, f"{what} actions", tuple(ACTIONS))
        if keys is None:
            return {}
        if not keys and not node.value:
            self.report.add(node, f"{what} actions: empty; a rule must do something (or use enabled: false)")
            return {}
        out: dict[str, Action] = {}
        for name, (_key_node, value_node) in keys.items():
            action = ACTIONS[name](self.report, value_node, what)
            if action is not None:
                out[name] = action
        pin, cache = out.get("pin"), out.get("cache")
        if isinstance(pin, Pin) and pin.pin and isinstance(cache, Cache) and cache.priority == "none":
            self.report.add(node, f"{what}: 'pin: true' and 'cache: none' contradict each other")
        return out
