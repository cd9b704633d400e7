"""Rules, conditions and templates as values: what a rule file means once parsed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlfs.policy.actions import Action
from mlfs.policy.context import PROPERTIES, Situation
from mlfs.policy.operators import Predicate

# Scores are float sums of weights; compare with a little slack so 0.1+0.2 reaches 0.3.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Condition:
    property: str
    operator: str
    value: Any
    weight: float = 1.0
    test: Predicate = field(compare=False, repr=False, default=lambda _actual: False)

    def matches(self, situation: Situation) -> bool:
        actual = PROPERTIES[self.property].get(situation)
        return actual is not None and self.test(actual)


@dataclass(frozen=True)
class Rule:
    id: str
    priority: int
    actions: Mapping[str, Action] = field(default_factory=dict, hash=False)
    conditions: tuple[Condition, ...] = ()
    description: str = ""
    enabled: bool = True
    threshold: float = 1.0  # share of condition weight that must match; 1.0 = all
    origin: str = ""  # "file:line" where the rule is defined
    layer: str = ""  # which load layer brought it in (set when layers are merged)

    @property
    def is_switch_off(self) -> bool:
        """`{id: x, enabled: false}` alone switches off an earlier layer's rule x."""
        return not self.enabled and not self.actions

    def score(self, situation: Situation) -> float:
        """Matched share of condition weight, 0..1; a rule without conditions scores 1."""
        if not self.conditions:
            return 1.0
        total = matched = 0.0
        for cond in self.conditions:
            total += cond.weight
            if cond.matches(situation):
                matched += cond.weight
        return matched / total

    def reaches(self, score: float) -> bool:
        return score + _EPSILON >= self.threshold


@dataclass(frozen=True)
class Use:
    """A reference to a template by name, and where it was written."""

    name: str
    file: str
    line: int


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    uses: tuple[Use, ...]
    rules: tuple[Rule, ...]
    file: str
    line: int


@dataclass(frozen=True)
class PinBudget:
    """Bytes, or a share of the chunk store's size ('25%')."""

    bytes: int | None
    fraction: float | None
    file: str
    line: int

    def resolve(self, store_size: int | None) -> int | None:
        if self.bytes is not None:
            return self.bytes
        assert self.fraction is not None
        return None if store_size is None else int(store_size * self.fraction)


@dataclass(frozen=True)
class RuleFile:
    path: str
    description: str = ""
    uses: tuple[Use, ...] = ()
    templates: tuple[Template, ...] = ()
    rules: tuple[Rule, ...] = ()
    pin_budget: PinBudget | None = None
