"""The shipped rule files are valid, found from the package, and free of clashes."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlfs
from mlfs.policy import PLUGINS, detect_plugins
from mlfs.policy.builtin import load_library, rules_dir, template_files
from mlfs.policy.layers import find_clashes, load_ruleset
from mlfs.policy.model import Use
from tests.policy.helpers import HF_MODEL, make_manifest

RULES = Path(mlfs.__file__).resolve().parent.parent / "rules"
SHIPPED = sorted(RULES.rglob("*.yaml"))


def test_builtin_rules_are_found_next_to_the_package() -> None:
    assert rules_dir() == RULES


def test_rules_dir_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFS_RULES_DIR", str(tmp_path))
    assert rules_dir() == tmp_path


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(RULES)) for p in SHIPPED])
def test_every_shipped_file_validates_as_a_user_file(path: Path) -> None:
    load_ruleset(make_manifest(HF_MODEL), [path], env="prod", store_size=1 << 40)


def test_required_templates_exist() -> None:
    problems: list = []
    library = load_library(RULES, problems)
    assert not problems
    assert {"llm-inference", "hf-transformers", "training-stream", "random-access-embeddings"} <= set(library.names())
    assert len(template_files(RULES)) == len(library.names())


def test_all_templates_together_have_no_priority_clash() -> None:
    problems: list = []
    library = load_library(RULES, problems)
    rules = library.expand([Use(name, "test", 0) for name in library.names()], problems)
    assert not problems
    assert find_clashes(rules) == []


def test_plugins_detect_layouts_and_bring_their_templates() -> None:
    assert {"huggingface", "safetensors", "pytorch", "onnx", "tensorflow"} <= set(PLUGINS)
    found = {p.name for p in detect_plugins(make_manifest(HF_MODEL))}
    assert found == {"huggingface", "safetensors"}
    onnx = {p.name for p in detect_plugins(make_manifest({"model.onnx": 10, "model.onnx_data": 10}))}
    assert onnx == {"onnx"}
    tf = {p.name for p in detect_plugins(make_manifest({"saved_model.pb": 10, "variables/variables.index": 10}))}
    assert tf == {"tensorflow"}
    assert detect_plugins(make_manifest({"notes.txt": 10})) == []


def test_plugin_rules_are_its_templates_rules() -> None:
    rules = PLUGINS["huggingface"]().rules()
    ids = {r.id for r in rules}
    assert {"hf-pytorch-bin-on-open", "llm-configs-pinned", "safetensors-header-then-tensors"} <= ids
