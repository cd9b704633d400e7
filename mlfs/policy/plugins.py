"""Framework plugins: recognise an artifact's layout and bring in the matching templates.

A plugin is a small class registered by name with `detect(manifest)` and `rules()`;
its rules form the 'plugin' load layer, above the built-in defaults and below the
environment and the user's files.
"""

from __future__ import annotations

import posixpath
from typing import ClassVar

from mlfs.manifest.model import Manifest
from mlfs.policy.builtin import load_library, rules_dir
from mlfs.policy.errors import Problem, RuleError
from mlfs.policy.formats import detect_format
from mlfs.policy.model import Rule, Use
from mlfs.policy.templates import TemplateLibrary

PLUGINS: dict[str, type[FrameworkPlugin]] = {}


def register(cls: type[FrameworkPlugin]) -> type[FrameworkPlugin]:
    PLUGINS[cls.name] = cls
    return cls


class FrameworkPlugin:
    name: ClassVar[str]
    templates: ClassVar[tuple[str, ...]]

    def detect(self, manifest: Manifest) -> bool:
        raise NotImplementedError

    def uses(self) -> list[Use]:
        return [Use(t, f"plugin {self.name}", 0) for t in self.templates]

    def rules(self, library: TemplateLibrary | None = None) -> list[Rule]:
        """The rules of this plugin's templates (from the built-in library by default)."""
        problems: list[Problem] = []
        if library is None:
            library = load_library(rules_dir(), problems)
        rules = library.expand(self.uses(), problems)
        if problems:
            raise RuleError(problems)
        return rules


def _names(manifest: Manifest) -> set[str]:
    return {posixpath.basename(f.path) for f in manifest.files}


def _formats(manifest: Manifest) -> set[str]:
    return {detect_format(f.path) for f in manifest.files}


@register
class HuggingFacePlugin(FrameworkPlugin):
    """A Hugging Face model repo: config.json beside weights or a tokenizer."""

    name = "huggingface"
    templates = ("hf-transformers",)

    def detect(self, manifest: Manifest) -> bool:
        names = _names(manifest)
        weights = any(n.endswith(".safetensors") or n.startswith("pytorch_model") for n in names)
        return "config.json" in names and (weights or "tokenizer.json" in names or "tokenizer_config.json" in names)


@register
class SafetensorsPlugin(FrameworkPlugin):
    name = "safetensors"
    templates = ("llm-inference",)

    def detect(self, manifest: Manifest) -> bool:
        return "safetensors" in _formats(manifest)


@register
class GgufPlugin(FrameworkPlugin):
    name = "gguf"
    templates = ("llm-inference",)

    def detect(self, manifest: Manifest) -> bool:
        return "gguf" in _formats(manifest)


@register
class PyTorchPlugin(FrameworkPlugin):
    name = "pytorch"
    templates = ("pytorch",)

    def detect(self, manifest: Manifest) -> bool:
        return "pytorch" in _formats(manifest)


@register
class OnnxPlugin(FrameworkPlugin):
    name = "onnx"
    templates = ("onnx",)

    def detect(self, manifest: Manifest) -> bool:
        return "onnx" in _formats(manifest)


@register
class TensorFlowPlugin(FrameworkPlugin):
    """A SavedModel: saved_model.pb with a variables/ folder."""

    name = "tensorflow"
    templates = ("tensorflow",)

    def detect(self, manifest: Manifest) -> bool:
        return "saved_model.pb" in _names(manifest)


@register
class DatasetShardsPlugin(FrameworkPlugin):
    """Datasets stored as TFRecord or Parquet shards, read once per epoch."""

    name = "dataset-shards"
    templates = ("training-stream",)

    def detect(self, manifest: Manifest) -> bool:
        return bool(_formats(manifest) & {"tfrecord", "parquet"})


def detect_plugins(manifest: Manifest) -> list[FrameworkPlugin]:
    """Plugins that recognise the manifest, in registration order."""
    return [p for p in (cls() for cls in PLUGINS.values()) if p.detect(manifest)]
