"""Every malformed rule file gives one line naming file, line and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfs.policy import PolicyEngine, RuleError
from mlfs.policy.layers import load_ruleset
from tests.policy.helpers import make_manifest, write

GOOD_RULE = """
rules:
  - id: ok
    priority: 1
    actions: {cache: high}
"""

# (name, file text, expected line, expected words in the message)
CASES = [
    ("bad yaml", "rules:\n  - id: a\n    priority: [1, 2\n", 4, "bad YAML"),
    ("tab indentation", "rules:\n\t- id: a\n", 2, "bad YAML"),
    ("not a mapping", "- just\n- a list\n", 1, "expected a mapping, got a list"),
    ("unknown top key", "rulez: []\n", 1, "unknown key 'rulez'"),
    ("unknown rule key", "rules:\n  - id: a\n    priority: 1\n    action: {pin: true}\n", 4, "unknown key 'action'"),
    ("unknown action", "rules:\n  - id: a\n    priority: 1\n    actions:\n      preload: {when: open}\n", 5,
     "unknown key 'preload'"),
    ("unknown action key", "rules:\n  - id: a\n    priority: 1\n    actions:\n      stream: {window: 4}\n", 5,
     "unknown key 'window'"),
    ("priority wrong type", "rules:\n  - id: a\n    priority: high\n    actions: {pin: true}\n", 3,
     "priority: expected an integer"),
    ("pin wrong type", "rules:\n  - id: a\n    priority: 1\n    actions: {pin: yes please}\n", 4,
     "pin: expected true or false"),
    ("unknown operator", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.size, operator: bigger, value: 1}\n    actions: {pin: true}\n", 5,
     "unknown operator 'bigger'"),
    ("operator not for property", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.format, operator: lt, value: json}\n    actions: {pin: true}\n", 5,
     "does not apply to file.format"),
    ("bad regex", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - property: file.path\n        operator: regex\n        value: '(unclosed'\n    actions: {pin: true}\n", 7,
     "bad regex"),
    ("unknown property", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.colour, operator: eq, value: red}\n    actions: {pin: true}\n", 5,
     "unknown property 'file.colour'"),
    ("unknown format value", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.format, operator: eq, value: safetensor}\n    actions: {pin: true}\n", 5,
     "got 'safetensor'"),
    ("bad size", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.size, operator: lt, value: 12 parsecs}\n    actions: {pin: true}\n", 5,
     "expected a size"),
    ("in needs a list", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.format, operator: in, value: json}\n    actions: {pin: true}\n", 5,
     "needs a non-empty list"),
    ("missing priority", "rules:\n  - id: a\n    actions: {pin: true}\n", 2, "missing required key(s): priority"),
    ("empty actions", "rules:\n  - id: a\n    priority: 1\n    actions: {}\n", 4, "a rule must do something"),
    ("duplicate id", "rules:\n  - id: a\n    priority: 1\n    actions: {pin: true}\n"
     "  - id: a\n    priority: 2\n    actions: {pin: false}\n", 5, "defined twice"),
    ("duplicate key", "rules:\n  - id: a\n    priority: 1\n    priority: 2\n    actions: {pin: true}\n", 4,
     "duplicate key 'priority'"),
    ("priority clash", "rules:\n  - id: a\n    priority: 5\n    actions: {cache: high}\n"
     "  - id: b\n    priority: 5\n    actions: {cache: low}\n", 5, "priority clash"),
    ("cyclic template", "templates:\n  a:\n    use: [b]\n  b:\n    use: [a]\n", 5, "template cycle: a -> b -> a"),
    ("self-using template", "templates:\n  loop:\n    use: [loop]\n", 3, "template cycle: loop -> loop"),
    ("unknown template", "use: [llm-inferense]\n", 1, "unknown template 'llm-inferense'"),
    ("head without bytes", "rules:\n  - id: a\n    priority: 1\n    actions:\n      prefetch: {when: open, what: head}\n",
     5, "needs 'bytes'"),
    ("bad prefetch when", "rules:\n  - id: a\n    priority: 1\n    actions:\n      prefetch: {when: boot}\n", 5,
     "expected one of mount, open, never"),
    ("window start above max", "rules:\n  - id: a\n    priority: 1\n    actions:\n"
     "      stream: {window_start: 8, window_max: 2}\n", 5, "window_start (8) is above window_max (2)"),
    ("pin with cache none", "rules:\n  - id: a\n    priority: 1\n    actions: {pin: true, cache: none}\n", 4,
     "contradict"),
    ("weight zero", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.size, operator: gt, value: 1, weight: 0}\n    actions: {pin: true}\n", 5,
     "weight: must be above 0"),
    ("threshold above one", "rules:\n  - id: a\n    priority: 1\n    threshold: 2\n    actions: {pin: true}\n", 4,
     "threshold: expected a number from 0 to 1"),
    ("extension without dot", "rules:\n  - id: a\n    priority: 1\n    conditions:\n"
     "      - {property: file.extension, operator: eq, value: json}\n    actions: {pin: true}\n", 5,
     "start with a dot"),
    ("switch-off of unknown rule", "rules:\n  - {id: no-such-rule, enabled: false}\n", 2,
     "no rule has that id"),
    ("bad rule id", "rules:\n  - id: Big Rule\n    priority: 1\n    actions: {pin: true}\n", 2, "rule id 'Big Rule'"),
    ("bad version", "version: 2\n" + GOOD_RULE, 1, "version: expected an integer from 1 to 1"),
    ("empty file", "", 0, "empty file"),
]


@pytest.mark.parametrize(("text", "line", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_rule_file_names_file_line_and_expectation(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleError) as info:
        load_ruleset(None, [path])
    message = str(info.value)
    assert "\n" not in message
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where), message
    assert words in message, message


def test_table_has_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15


def test_pin_budget_above_store_size_is_an_error_only_when_store_size_is_known(tmp_path: Path) -> None:
    path = write(tmp_path, "budget.yaml", "pin_budget: 20GiB\n" + GOOD_RULE)
    assert load_ruleset(None, [path]).pin_budget == 20 * 1024**3
    with pytest.raises(RuleError, match=rf"^{path}:1: pin_budget 20.0 GiB is above the chunk store size 10.0 GiB"):
        load_ruleset(None, [path], store_size=10 * 1024**3)


def test_percent_pin_budget_resolves_against_store_size(tmp_path: Path) -> None:
    path = write(tmp_path, "budget.yaml", "pin_budget: '10%'\n" + GOOD_RULE)
    assert load_ruleset(None, [path], store_size=1000).pin_budget == 100
    assert load_ruleset(None, [path]).pin_budget is None
    bad = write(tmp_path, "bad.yaml", "pin_budget: '150%'\n")
    with pytest.raises(RuleError, match=r"bad.yaml:1: pin_budget: a share must be between 0% and 100%"):
        load_ruleset(None, [bad])


def test_every_problem_is_collected_and_the_message_counts_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", """
        rules:
          - id: a
            priority: x
            actions: {pin: true}
          - id: b
            priority: 1
            actions: {cache: hot}
          - id: c
            priority: 2
            colour: blue
            actions: {pin: true}
        """)
    with pytest.raises(RuleError) as info:
        load_ruleset(None, [path])
    lines = [p.line for p in info.value.problems]
    assert lines == [3, 7, 10]
    assert str(info.value).endswith("(and 2 more; see 'mlfs rules validate')")


def test_engine_does_not_load_with_invalid_rules(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "rules: {}\n")
    with pytest.raises(RuleError, match="rules: expected a list"):
        PolicyEngine.load(make_manifest({"a.json": 10}), user_files=[path])


def test_missing_rule_file_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="nope.yaml: no such file"):
        load_ruleset(None, [tmp_path / "nope.yaml"])


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(RuleError, match=r"no environment 'staging'; known: dev, prod"):
        load_ruleset(None, env="staging")


def test_redefining_a_builtin_template_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "templates:\n  llm-inference:\n    rules: []\n")
    with pytest.raises(RuleError, match=r"t.yaml:2: template 'llm-inference' is already defined at .*llm-inference.yaml"):
        load_ruleset(None, [path])
