"""Pipeline documents: parse JSON/YAML, start from a template, validate every step's
parameters before any image is read, and give the pipeline a canonical form.

A document:

    name: my-224            # optional
    template: imagenet-224  # optional: start from a built-in template ...
    overrides:              # ... and change parameters of its steps (the first of that name)
      resize: {size: 288}
    seed: 0                 # augment randomness (per image: seed + input digest)
    steps:                  # or give the whole list yourself
      - decode: {mode: RGB}
      - resize: {size: 256, mode: shorter, filter: bilinear}
      - arrays: {format: npy}

The canonical JSON (sorted keys, every default filled in, each step's implementation
version) is what the cache key and the lineage digest are computed from, so a change of
any parameter, or of the code of any step, changes the digest.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlfs.errors import MlfsError
from mlfs.preprocess import params as P
from mlfs.preprocess.templates import TEMPLATES

FORMAT = "mlfs.pipeline/1"
MAX_STEPS = 64
MAX_DOCUMENT = 1 << 20
# Stages of the data a step sees: an image (PIL), or an array after normalize/to_layout.
IMAGE, ARRAY = "image", "array"
OUTPUT_STEPS = ("encode", "arrays")


class PipelineError(MlfsError):
    """A pipeline document is invalid; the message names the step and the parameter."""


@dataclass(frozen=True)
class Step:
    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]
    seed: int = 0

    @property
    def output(self) -> Step:
        return self.steps[-1]

    def canonical(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "seed": self.seed,
            "steps": [{"step": s.name, "version": P.VERSIONS[s.name], "params": s.params} for s in self.steps],
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of the canonical JSON: the pipeline's identity in lineage."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def sample_json(self) -> str:
        """Canonical JSON of the per-image part: everything but how samples are grouped
        into files (safetensors shard size), which does not change any sample's bytes."""
        doc = self.canonical()
        last = doc["steps"][-1]
        if last["step"] == "arrays":
            last["params"] = {k: v for k, v in last["params"].items() if k != "shard_size"}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    def result_key(self, input_sha256: str) -> str:
        """The cache key of one input's result: SHA-256 over the per-image pipeline and the input digest."""
        return result_key(self._sample_json, input_sha256)

    @functools.cached_property
    def _sample_json(self) -> str:
        return self.sample_json()

    def to_document(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed,
                "steps": [{s.name: s.params} for s in self.steps]}


def result_key(sample_json: str, input_sha256: str) -> str:
    """`Pipeline.result_key` from the per-image pipeline's canonical JSON (what a worker
    process is given)."""
    h = _key_prefix(sample_json).copy()
    h.update(b"\0" + input_sha256.encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _key_prefix(sample_json: str) -> Any:
    # Hashed once per pipeline, not once per input.
    return hashlib.sha256(b"mlfs.preprocess.result/1\0" + sample_json.encode())


# ---------------------------------------------------------------------- loading
def load_pipeline(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """A pipeline from a file path or a template name; `overrides` are `step.param=value` (YAML values)."""
    path = Path(spec)
    if spec in TEMPLATES and not path.exists():
        doc: Any = {"template": spec}
    elif path.is_file():
        try:
            text = path.read_bytes()[: MAX_DOCUMENT + 1]
        except OSError as exc:
            raise PipelineError(f"pipeline {spec}: {exc.strerror}") from None
        if len(text) > MAX_DOCUMENT:
            raise PipelineError(f"pipeline {spec}: larger than {MAX_DOCUMENT} bytes")
        doc = parse_text(text.decode("utf-8", "replace"), origin=spec)
    elif path.suffix in (".json", ".yaml", ".yml") or "/" in spec:
        raise PipelineError(f"pipeline {spec}: no such file")
    else:
        raise PipelineError(f"unknown template {spec!r} (templates: {', '.join(sorted(TEMPLATES))})")
    if overrides:
        doc = dict(doc)
        extra = dict(doc.get("overrides") or {})
        for item in overrides:
            target, sep, value = item.partition("=")
            step, dot, param = target.partition(".")
            if not sep or not dot or not step or not param:
                raise PipelineError(f"--set {item!r}: expected STEP.PARAM=VALUE")
            extra.setdefault(step, {})[param] = yaml.safe_load(value)
        doc["overrides"] = extra
    return build_pipeline(doc, default_name=path.stem if path.is_file() else spec)


def parse_text(text: str, origin: str = "pipeline") -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML or JSON"
        raise PipelineError(f"{origin}{where}: {problem}") from None


_DOC_KEYS = {"name", "template", "overrides", "seed", "steps", "format"}


def build_pipeline(doc: Any, default_name: str = "pipeline") -> Pipeline:
    """Validate a parsed document and return the pipeline with every default filled in."""
    if not isinstance(doc, dict):
        raise PipelineError("pipeline must be a mapping with 'steps' or 'template'")
    unknown = set(doc) - _DOC_KEYS
    if unknown:
        raise PipelineError(f"pipeline: unknown key {sorted(unknown)[0]!r} (expected one of {', '.join(sorted(_DOC_KEYS))})")
    if doc.get("format", FORMAT) != FORMAT:
        raise PipelineError(f"pipeline: format must be {FORMAT!r}")
    template = doc.get("template")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise PipelineError(f"pipeline: seed must be a non-negative integer, got {seed!r}")
    if template is not None:
        if not isinstance(template, str) or template not in TEMPLATES:
            raise PipelineError(f"unknown template {template!r} (templates: {', '.join(sorted(TEMPLATES))})")
        if "steps" in doc:
            raise PipelineError("pipeline: give either 'template' (with 'overrides') or 'steps', not both")
        raw_steps = copy.deepcopy(TEMPLATES[template]["steps"])
        seed = doc.get("seed", TEMPLATES[template].get("seed", 0))
    else:
        raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PipelineError("pipeline: 'steps' must be a non-empty list")
    if len(raw_steps) > MAX_STEPS:
        raise PipelineError(f"pipeline: more than {MAX_STEPS} steps")
    named = [_split_step(i, raw) for i, raw in enumerate(raw_steps, 1)]
    named = _apply_overrides(named, doc.get("overrides") or {})
    steps = []
    for index, (name, params) in enumerate(named, 1):
        try:
            steps.append(Step(name, P.CHECKERS[name](params)))
        except P.ParamError as exc:
            raise PipelineError(f"step {index} ({name}): {exc}") from None
    _check_order(steps)
    name = doc.get("name", template or default_name)
    if not isinstance(name, str) or not name or len(name) > 128 or "/" in name:
        raise PipelineError(f"pipeline: name must be a short string without '/', got {name!r}")
    return Pipeline(name=name, steps=tuple(steps), seed=seed)


def _split_step(index: int, raw: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
        params = {} if params is None else params
    else:
        raise PipelineError(f"step {index}: expected a step name or a one-key mapping {{step: {{params}}}}, got {raw!r}")
    if not isinstance(name, str) or name not in P.CHECKERS:
        raise PipelineError(f"step {index}: unknown step {name!r} (steps: {', '.join(P.CHECKERS)})")
    if not isinstance(params, dict):
        raise PipelineError(f"step {index} ({name}): parameters must be a mapping, got {params!r}")
    return name, dict(params)


def _apply_overrides(named: list[tuple[str, dict[str, Any]]], overrides: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(overrides, dict):
        raise PipelineError("pipeline: 'overrides' must map step names to parameters")
    for step, changes in overrides.items():
        if not isinstance(changes, dict):
            raise PipelineError(f"overrides: {step!r} must map parameter names to values")
        found = [params for name, params in named if name == step]
        if not found:
            raise PipelineError(f"overrides: the pipeline has no step {step!r} (steps: {', '.join(n for n, _ in named)})")
        found[0].update(changes)
    return named


def _check_order(steps: list[Step]) -> None:
    if steps[0].name != "decode":
        raise PipelineError(f"step 1 ({steps[0].name}): a pipeline starts with decode")
    stage = IMAGE
    for index, step in enumerate(steps, 1):
        where = f"step {index} ({step.name})"
        if step.name == "decode" and index != 1:
            raise PipelineError(f"{where}: decode may only be the first step")
        if step.name in OUTPUT_STEPS and index != len(steps):
            raise PipelineError(f"{where}: the output step must be the last step")
        if step.name in P.IMAGE_ONLY and stage != IMAGE:
            raise PipelineError(f"{where}: works on images and must come before normalize and to_layout")
        if step.name == "encode" and stage != IMAGE:
            raise PipelineError(f"{where}: cannot write float arrays as 8-bit image files; use arrays")
        if step.name == "normalize" and stage != IMAGE:
            raise PipelineError(f"{where}: normalize may appear once, before to_layout")
        if step.name in ("normalize", "to_layout"):
            stage = ARRAY
    if steps[-1].name not in OUTPUT_STEPS:
        raise PipelineError(f"step {len(steps)} ({steps[-1].name}): a pipeline ends with an output step (encode or arrays)")


def describe_templates() -> list[tuple[str, str]]:
    return [(name, t["description"]) for name, t in sorted(TEMPLATES.items())]
