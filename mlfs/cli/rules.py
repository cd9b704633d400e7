"""`mlfs rules`: validate rule files, explain decisions for a manifest, replay a trace."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from mlfs.cli.common import run_command

# The policy engine is imported by the commands that use it: every other `mlfs`
# command (a mount's start-up among them) starts without it.
if TYPE_CHECKING:
    from mlfs.policy.errors import Problem
    from mlfs.policy.workload import WorkloadContext


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from mlfs.policy.units import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _workload(_ctx: click.Context, _param: click.Parameter, value: str | None) -> WorkloadContext | None:
    if not value:
        return None
    from mlfs.policy import parse_workload

    try:
        return parse_workload(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_rules_option = click.option("--rules", "rule_files", multiple=True, type=click.Path(dir_okay=False),
                             help="User rule file (repeatable; later files override earlier ones).")
_env_option = click.option("--env", envvar="MLFS_ENV", help="Environment layer: rules/env/NAME.yaml.")
_template_option = click.option("--template", "templates", multiple=True, help="Apply a template by name.")
_workload_option = click.option("--workload", envvar="MLFS_WORKLOAD", callback=_workload,
                                help="framework[:phase], e.g. vllm:inference.")
_store_option = click.option("--store-size", callback=_size, help="Chunk store size (e.g. 100GiB).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group("rules")
def rules() -> None:
    """Check, explain and test policy rules (load order: rules/README.md)."""


@rules.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_store_option
def validate(files: tuple[str, ...], store_size: int | None) -> None:
    """Check rule FILEs; print every problem as FILE:LINE: message, exit 1 if any."""
    from mlfs.policy import RuleError
    from mlfs.policy.layers import load_ruleset

    problems: list[Problem] = []
    rule_count = 0
    for path in files:
        try:
            rule_count += len(load_ruleset(None, [path], store_size=store_size).rules)
        except RuleError as exc:
            problems.extend(p for p in exc.problems if p not in problems)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"mlfs: {len(problems)} problem(s) in rule files", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(files)} file(s)")


@rules.command("explain")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@_rules_option
@_env_option
@_template_option
@_workload_option
@_store_option
@_json_option
def explain(manifest_path: str, rule_files: tuple[str, ...], env: str | None, templates: tuple[str, ...],
            workload: WorkloadContext | None, store_size: int | None, as_json: bool) -> None:
    """For each file of MANIFEST: the rules that matched, their scores, and what won."""

    def body() -> None:
        from mlfs.manifest.validate import load_manifest
        from mlfs.policy import PolicyEngine
        from mlfs.policy.explain import explain_manifest, format_explanations

        manifest = load_manifest(manifest_path)
        engine = PolicyEngine.load(manifest, rule_files, env=env, templates=templates, store_size=store_size)
        explanations = explain_manifest(engine, manifest, workload=workload)
        if as_json:
            doc = {"layers": list(engine.ruleset.layers), "pin_budget": engine.pin_budget,
                   "files": [e.to_json() for e in explanations]}
            click.echo(json.dumps(doc, indent=1))
        else:
            click.echo(format_explanations(engine, explanations), nl=False)

    run_command(body)


@rules.command("test")
@click.argument("rule_files", metavar="FILE...", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--manifest", "manifest_path", required=True, type=click.Path(dir_okay=False))
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False),
              help="JSON lines {t, path, offset, size, pid?} (format: rules/README.md).")
@_env_option
@_template_option
@_workload_option
@click.option("--all", "show_all", is_flag=True, help="Show every read, not only decision changes.")
@_json_option
def test(rule_files: tuple[str, ...], manifest_path: str, trace_path: str, env: str | None,
         templates: tuple[str, ...], workload: WorkloadContext | None, show_all: bool, as_json: bool) -> None:
    """Replay a recorded access trace through the rules and show the decisions."""

    def body() -> None:
        from mlfs.manifest.validate import load_manifest
        from mlfs.policy import PolicyEngine
        from mlfs.policy.explain import format_replay
        from mlfs.policy.trace import read_trace, replay

        manifest = load_manifest(manifest_path)
        engine = PolicyEngine.load(manifest, rule_files, env=env, templates=templates)
        steps = replay(engine, manifest, read_trace(trace_path, manifest), workload=workload)
        if as_json:
            doc = [{
                "t": None if s.event is None else s.event.t,
                "path": s.path,
                "offset": None if s.event is None else s.event.offset,
                "size": None if s.event is None else s.event.size,
                "pattern": None if s.access is None else s.access.pattern,
                "changed": s.changed,
                "decision": s.decision.to_json(),
            } for s in steps if show_all or s.changed]
            click.echo(json.dumps({"steps": doc}, indent=1))
        else:
            click.echo(format_replay(steps, changes_only=not show_all), nl=False)

    run_command(body)
