"""PolicyEngine: the loaded rules, per-file decisions, explanations and safe reloads.

The rule set is one immutable `RuleSet` held in one attribute. `decide()` reads that
attribute once, so a reload (SIGHUP) that swaps it never shows a caller half of the
old rules and half of the new; a reload that fails raises and leaves it untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfs.manifest.model import Manifest
from mlfs.policy.context import AccessContext, FileContext, Situation, SystemContext
from mlfs.policy.counters import RuleCounters
from mlfs.policy.decision import FileDecision, resolve
from mlfs.policy.layers import RuleSet, load_ruleset
from mlfs.policy.model import Rule
from mlfs.policy.workload import WorkloadContext


@dataclass(frozen=True)
class RuleMatch:
    rule: Rule
    score: float
    matched: bool
    won: tuple[str, ...]  # action kinds this rule decided for the file


@dataclass(frozen=True)
class Explanation:
    file: FileContext
    matches: tuple[RuleMatch, ...]  # every enabled rule, in decision order
    decision: FileDecision

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.file.path,
            "size": self.file.size,
            "format": self.file.format,
            "matched": [
                {"rule": m.rule.id, "score": round(m.score, 4), "threshold": m.rule.threshold,
                 "priority": m.rule.priority, "layer": m.rule.layer, "origin": m.rule.origin,
                 "actions": sorted(m.rule.actions), "won": list(m.won)}
                for m in self.matches if m.matched
            ],
            "decision": self.decision.to_json(),
        }


class PolicyEngine:
    def __init__(
        self,
        ruleset: RuleSet,
        manifest: Manifest | None = None,
        *,
        user_files: Sequence[str | Path] = (),
        env: str | None = None,
        templates: Sequence[str] = (),
        store_size: int | None = None,
        base: Path | None = None,
    ) -> None:
        self._ruleset = ruleset
        self._manifest = manifest
        self._load_args: dict[str, Any] = {
            "user_files": tuple(user_files), "env": env, "templates": tuple(templates),
            "store_size": store_size, "base": base,
        }
        self._reload_lock = threading.Lock()
        self.counters = RuleCounters()

    @classmethod
    def load(
        cls,
        manifest: Manifest | None,
        user_files: Sequence[str | Path] = (),
        env: str | None = None,
        templates: Sequence[str] = (),
        store_size: int | None = None,
        base: Path | None = None,
    ) -> PolicyEngine:
        """Load every layer for this manifest; raises RuleError (file:line) on invalid rules."""
        ruleset = load_ruleset(manifest, user_files, env, templates, store_size, base)
        return cls(ruleset, manifest, user_files=user_files, env=env, templates=templates,
                   store_size=store_size, base=base)

    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._ruleset.rules

    @property
    def pin_budget(self) -> int | None:
        return self._ruleset.pin_budget

    def reload(
        self,
        user_files: Sequence[str | Path] | None = None,
        env: str | None = None,
        templates: Sequence[str] | None = None,
    ) -> RuleSet:
        """Re-read every layer (with new user files if given) and swap the rule set in.

        On RuleError nothing changes and the error propagates, so the caller can log
        it and keep serving with the old rules. Counters survive a reload.
        """
        with self._reload_lock:
            args = dict(self._load_args)
            if user_files is not None:
                args["user_files"] = tuple(user_files)
            if env is not None:
                args["env"] = env or None  # "" clears the environment layer
            if templates is not None:
                args["templates"] = tuple(templates)
            ruleset = load_ruleset(self._manifest, **args)
            self._load_args = args
            self._ruleset = ruleset
            return ruleset

    def decide(
        self,
        file: FileContext,
        access: AccessContext | None = None,
        workload: WorkloadContext | None = None,
        system: SystemContext | None = None,
        *,
        count: bool = True,
    ) -> FileDecision:
        """The decision for a file now; `count` adds one 'matched' to each matching rule."""
        situation = Situation(file, access, workload, system)
        matched = [r for r in self._ruleset.rules if r.reaches(r.score(situation))]
        if count:
            for rule in matched:
                self.counters.matched(rule.id)
        return resolve(matched)

    def explain(
        self,
        file: FileContext,
        access: AccessContext | None = None,
        workload: WorkloadContext | None = None,
        system: SystemContext | None = None,
    ) -> Explanation:
        """Like decide(), with every rule's score and which actions each winner decided."""
        situation = Situation(file, access, workload, system)
        scored = [(r, r.score(situation)) for r in self._ruleset.rules]
        decision = resolve([r for r, s in scored if r.reaches(s)])
        won: dict[str, list[str]] = {}
        for kind, rule_id in decision.decided_by:
            won.setdefault(rule_id, []).append(kind)
        matches = tuple(RuleMatch(r, s, r.reaches(s), tuple(won.get(r.id, ()))) for r, s in scored)
        return Explanation(file, matches, decision)
