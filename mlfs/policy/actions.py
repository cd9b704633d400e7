"""Rule actions, registered by name; each is a small frozen value parsed from YAML nodes.

A decision takes each action kind from the highest-priority matching rule that sets
it, so actions are whole values: a `stream` action is never half from one rule and
half from another, which keeps `explain` truthful about who decided what.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from mlfs.policy import yamlsrc
from mlfs.policy.units import format_size, parse_size
from mlfs.policy.yamlsrc import Report

MAX_WINDOW_CHUNKS = 1024
MAX_PARALLEL = 64
CACHE_PRIORITIES = ("high", "normal", "low", "none")


@dataclass(frozen=True)
class Prefetch:
    when: str | None  # "mount" | "open" | None (never: switches off an earlier rule's prefetch)
    what: str = "whole"  # "whole" | "head" | "safetensors" (header, then tensors in file order)
    bytes: int | None = None  # for "head"

    def describe(self) -> str:
        if self.when is None:
            return "prefetch never"
        what = f"first {format_size(self.bytes or 0)}" if self.what == "head" else self.what
        return f"prefetch {what} at {self.when}"


@dataclass(frozen=True)
class Stream:
    window_start: int = 1  # chunks in flight after the first sequential read
    window_max: int = 8  # the window doubles on sequential reads up to this
    parallel: int = 4  # concurrent chunk fetches for this file
    drop_behind: bool = False  # read chunks leave the store first, so streaming never evicts pins

    def describe(self) -> str:
        drop = ", drop-behind" if self.drop_behind else ""
        return f"stream window {self.window_start}..{self.window_max} x{self.parallel}{drop}"


@dataclass(frozen=True)
class Pin:
    pin: bool

    def describe(self) -> str:
        return "pin" if self.pin else "no pin"


@dataclass(frozen=True)
class Cache:
    priority: str

    def describe(self) -> str:
        return f"cache {self.priority}"


@dataclass(frozen=True)
class Prioritize:
    priority: int

    def describe(self) -> str:
        return f"fetch priority {self.priority}"


Action = Prefetch | Stream | Pin | Cache | Prioritize


def action_json(action: Action) -> Any:
    return asdict(action)


def _prefetch(report: Report, node: yaml.Node, where: str) -> Prefetch | None:
    keys = yamlsrc.mapping(report, node, f"{where} prefetch", ("when", "what", "bytes"), required=("when",))
    if keys is None or "when" not in keys:
        return None
    when = yamlsrc.string(report, keys["when"][1], f"{where} prefetch.when", ("mount", "open", "never"))
    what = "whole"
    if "what" in keys:
        what = yamlsrc.string(report, keys["what"][1], f"{where} prefetch.what", ("whole", "head", "safetensors"))
    nbytes = None
    if "bytes" in keys:
        value_node = keys["bytes"][1]
        try:
            nbytes = parse_size(yamlsrc.scalar(value_node))
        except ValueError as exc:
            report.add(value_node, f"{where} prefetch.bytes: {exc}")
            return None
        if nbytes <= 0:
            report.add(value_node, f"{where} prefetch.bytes: must be more than 0")
            return None
        if what != "head":
            report.add(keys["bytes"][0], f"{where} prefetch.bytes: only applies with 'what: head'")
            return None
    elif what == "head":
        report.add(node, f"{where} prefetch: 'what: head' needs 'bytes' (how much of the start to fetch)")
        return None
    if when is None or what is None:
        return None
    return Prefetch(when=None if when == "never" else when, what=what, bytes=nbytes)


def _stream(report: Report, node: yaml.Node, where: str) -> Stream | None:
    keys = yamlsrc.mapping(report, node, f"{where} stream", ("window_start", "window_max", "parallel", "drop_behind"))
    if keys is None:
        return None
    values: dict[str, Any] = {}
    for name in ("window_start", "window_max"):
        if name in keys:
            values[name] = yamlsrc.integer(report, keys[name][1], f"{where} stream.{name} (chunks)", 1, MAX_WINDOW_CHUNKS)
    if "parallel" in keys:
        values["parallel"] = yamlsrc.integer(report, keys["parallel"][1], f"{where} stream.parallel", 1, MAX_PARALLEL)
    if "drop_behind" in keys:
        values["drop_behind"] = yamlsrc.boolean(report, keys["drop_behind"][1], f"{where} stream.drop_behind")
    if any(v is None for v in values.values()):
        return None
    stream = Stream(**values)
    if stream.window_start > stream.window_max:
        report.add(node, f"{where} stream: window_start ({stream.window_start}) is above window_max ({stream.window_max})")
        return None
    return stream


def _pin(report: Report, node: yaml.Node, where: str) -> Pin | None:
    value = yamlsrc.boolean(report, node, f"{where} pin")
    return None if value is None else Pin(value)


def _cache(report: Report, node: yaml.Node, where: str) -> Cache | None:
    value = yamlsrc.string(report, node, f"{where} cache", CACHE_PRIORITIES)
    return None if value is None else Cache(value)


def _prioritize(report: Report, node: yaml.Node, where: str) -> Prioritize | None:
    value = yamlsrc.integer(report, node, f"{where} prioritize", -100, 100)
    return None if value is None else Prioritize(value)


# The order here is the order actions are shown in; it does not affect decisions.
ACTIONS: dict[str, Callable[[Report, yaml.Node, str], Action | None]] = {
    "prefetch": _prefetch,
    "stream": _stream,
    "pin": _pin,
    "cache": _cache,
    "prioritize": _prioritize,
}
