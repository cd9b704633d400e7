"""Human-readable tables for `mlfs rules explain` and `mlfs rules test`."""

from __future__ import annotations

from collections.abc import Sequence

from mlfs.manifest.model import Manifest
from mlfs.policy.context import FileContext, SystemContext
from mlfs.policy.engine import Explanation, PolicyEngine
from mlfs.policy.trace import ReplayStep
from mlfs.policy.units import format_size
from mlfs.policy.workload import WorkloadContext


def explain_manifest(
    engine: PolicyEngine,
    manifest: Manifest,
    workload: WorkloadContext | None = None,
    system: SystemContext | None = None,
) -> list[Explanation]:
    """Mount-time view: every file, before any read (access patterns are not known yet)."""
    return [engine.explain(FileContext.from_entry(f), workload=workload, system=system) for f in manifest.files]


def format_explanations(engine: PolicyEngine, explanations: Sequence[Explanation]) -> str:
    lines = ["layers: " + (" < ".join(engine.ruleset.layers) or "none")]
    if engine.pin_budget is not None:
        lines.append(f"pin budget: {format_size(engine.pin_budget)}")
    for ex in explanations:
        lines.append("")
        lines.append(f"{ex.file.path}  ({ex.file.format}, {format_size(ex.file.size)})")
        matched = [m for m in ex.matches if m.matched]
        if not matched:
            lines.append("  no rule matched")
        width = max((len(m.rule.id) for m in matched), default=0)
        for m in matched:
            won = ", ".join(m.won) if m.won else "-"
            lines.append(f"  {m.rule.id:<{width}}  score {m.score:.2f}/{m.rule.threshold:.2f}  "
                         f"prio {m.rule.priority:>4}  won: {won}  [{m.rule.layer}]")
        lines.append(f"  => {ex.decision.describe()}")
    return "\n".join(lines) + "\n"


def format_replay(steps: Sequence[ReplayStep], changes_only: bool = True) -> str:
    """One line per decision; by default only where a file's decision changed."""
    rows = [("t", "path", "offset", "size", "pattern", "decision", "rules")]
    for step in steps:
        if changes_only and not step.changed:
            continue
        ev = step.event
        rows.append((
            "mount" if ev is None else f"{ev.t:.3f}",
            step.path,
            "" if ev is None else str(ev.offset),
            "" if ev is None else str(ev.size),
            "" if step.access is None else step.access.pattern,
            step.decision.describe(),
            ",".join(step.decision.rule_ids) or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(out) + "\n"
