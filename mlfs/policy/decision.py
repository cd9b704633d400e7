"""Turn the rules that matched a file into one decision.

Rules are tried in decision order (priority, then later layer); each action kind is
taken from the first matching rule that sets it. Nothing matched → the defaults
below, which are what a mount does without any policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlfs.policy.actions import Cache, Pin, Prefetch, Prioritize, Stream
from mlfs.policy.model import Rule
from mlfs.policy.units import format_size


@dataclass(frozen=True)
class FileDecision:
    prefetch_when: str | None = None  # None | "mount" | "open"
    prefetch_what: str = "whole"  # "whole" | "head" | "safetensors"
    prefetch_bytes: int | None = None  # for "head"
    stream_window_start: int = 1  # chunks
    stream_window_max: int = 8  # chunks
    stream_parallel: int = 4
    drop_behind: bool = False
    pin: bool = False
    cache_priority: str = "normal"  # "high" | "normal" | "low" | "none"
    fetch_priority: int = 0  # higher is fetched first
    rule_ids: tuple[str, ...] = ()  # rules that contributed, in decision order
    decided_by: tuple[tuple[str, str], ...] = ()  # (action kind, rule id) pairs

    def rule_for(self, action: str) -> str | None:
        """Id of the rule that decided `action` ('prefetch', 'stream', 'pin', ...), if any."""
        return dict(self.decided_by).get(action)

    def to_json(self) -> dict[str, Any]:
        return {
            "prefetch": None if self.prefetch_when is None else {
                "when": self.prefetch_when, "what": self.prefetch_what, "bytes": self.prefetch_bytes},
            "stream": {"window_start": self.stream_window_start, "window_max": self.stream_window_max,
                       "parallel": self.stream_parallel, "drop_behind": self.drop_behind},
            "pin": self.pin,
            "cache": self.cache_priority,
            "fetch_priority": self.fetch_priority,
            "rule_ids": list(self.rule_ids),
            "decided_by": dict(self.decided_by),
        }

    def describe(self) -> str:
        parts = []
        if self.prefetch_when:
            what = f"first {format_size(self.prefetch_bytes or 0)}" if self.prefetch_what == "head" else self.prefetch_what
            parts.append(f"prefetch {what} at {self.prefetch_when}")
        parts.append(f"stream {self.stream_window_start}..{self.stream_window_max} x{self.stream_parallel}"
                     + (" drop-behind" if self.drop_behind else ""))
        if self.pin:
            parts.append("pin")
        parts.append(f"cache {self.cache_priority}")
        if self.fetch_priority:
            parts.append(f"priority {self.fetch_priority}")
        return "; ".join(parts)


def resolve(matched: Sequence[Rule]) -> FileDecision:
    """`matched` in decision order → the decision, remembering who decided each action."""
    fields: dict[str, Any] = {}
    decided: dict[str, str] = {}
    for rule in matched:
        for kind, action in rule.actions.items():
            if kind in decided:
                continue
            decided[kind] = rule.id
            if isinstance(action, Prefetch):
                fields.update(prefetch_when=action.when, prefetch_what=action.what, prefetch_bytes=action.bytes)
            elif isinstance(action, Stream):
                fields.update(stream_window_start=action.window_start, stream_window_max=action.window_max,
                              stream_parallel=action.parallel, drop_behind=action.drop_behind)
            elif isinstance(action, Pin):
                fields["pin"] = action.pin
            elif isinstance(action, Cache):
                fields["cache_priority"] = action.priority
            elif isinstance(action, Prioritize):
                fields["fetch_priority"] = action.priority
    contributors = tuple(dict.fromkeys(decided.values()))
    order = {r.id: i for i, r in enumerate(matched)}
    contributors = tuple(sorted(contributors, key=order.__getitem__))
    return FileDecision(**fields, rule_ids=contributors, decided_by=tuple(decided.items()))
