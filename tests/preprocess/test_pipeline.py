"""Pipeline documents: one-line errors naming step, parameter and expectation; templates,
overrides, canonical form and cache keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlfs.preprocess.pipeline import PipelineError, build_pipeline, load_pipeline
from mlfs.preprocess.templates import TEMPLATES


@pytest.mark.parametrize("doc, message", [
    ({"steps": ["decode", "resize"]}, "step 2 (resize): size is required (a positive integer or [w, h])"),
    ({"steps": ["decode", {"center_crop": {"size": 4}}, {"resize": {"size": -4}}, "arrays"]},
     "step 3 (resize): size must be a positive integer or [w, h], got -4"),
    ({"steps": ["decode", {"resize": {"size": [0, 3]}}, "arrays"]},
     "step 2 (resize): size must be a positive integer or [w, h], got [0, 3]"),
    ({"steps": ["decode", {"blur": {}}, "arrays"]}, "step 2: unknown step 'blur'"),
    ({"steps": ["decode", {"resize": {"size": 8, "filter": "fancy"}}, "arrays"]},
     "step 2 (resize): filter must be one of nearest, box, bilinear, hamming, bicubic, lanczos, got 'fancy'"),
    ({"steps": ["decode", {"normalize": {"mean": [0.5], "std": [0]}}, "arrays"]},
     "step 2 (normalize): std values must be positive, got [0]"),
    ({"steps": ["decode", {"encode": {"format": "png", "quality": 5}}]},
     "step 2 (encode): quality applies to jpeg and webp only"),
    ({"steps": ["decode", {"augment": {"ops": [{"rotate": {"degrees": [10, -10]}}]}}, "arrays"]},
     "step 2 (augment): ops[1] (rotate): degrees must be [min, max]"),
    ({"steps": ["decode", {"resize": {"size": 8, "sharpen": True}}, "arrays"]},
     "step 2 (resize): unknown parameter 'sharpen'"),
    ({"steps": [{"resize": {"size": 8}}, "arrays"]}, "step 1 (resize): a pipeline starts with decode"),
    ({"steps": ["decode", "normalize", "grayscale", "arrays"]},
     "step 3 (grayscale): works on images and must come before normalize and to_layout"),
    ({"steps": ["decode", "resize"]}, "step 2 (resize): size is required"),
    ({"steps": ["decode", {"resize": {"size": 8}}]}, "step 2 (resize): a pipeline ends with an output step"),
    ({"template": "imagenet-225"}, "unknown template 'imagenet-225'"),
    ({"template": "imagenet-224", "overrides": {"resize": {"size": -4}}},
     "step 2 (resize): size must be a positive integer or [w, h], got -4"),
    ({"template": "imagenet-224", "overrides": {"blur": {"radius": 2}}}, "overrides: the pipeline has no step 'blur'"),
    ({"steps": [], "seed": 1}, "pipeline: 'steps' must be a non-empty list"),
    ({"stepz": []}, "pipeline: unknown key 'stepz'"),
])
def test_invalid_documents_name_the_problem(doc: dict, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        build_pipeline(doc)
    text = str(info.value)
    assert text.startswith(message), f"got {text!r}"
    assert "\n" not in text, "errors are one line"


def test_templates_validate_and_imagenet_is_the_documented_chain() -> None:
    for name in TEMPLATES:
        build_pipeline({"template": name})
    imagenet = build_pipeline({"template": "imagenet-224"})
    assert [s.name for s in imagenet.steps] == ["decode", "resize", "center_crop", "normalize", "to_layout", "arrays"]
    assert imagenet.steps[1].params == {"size": 256, "mode": "shorter", "filter": "bilinear"}
    assert imagenet.steps[2].params == {"size": [224, 224]}
    assert imagenet.steps[4].params == {"layout": "CHW"}


def test_override_changes_digest_and_every_result_key() -> None:
    base = build_pipeline({"template": "imagenet-224"})
    changed = build_pipeline({"template": "imagenet-224", "overrides": {"resize": {"size": 288}}})
    assert changed.steps[1].params["size"] == 288
    assert base.digest != changed.digest, "a parameter change must change the pipeline digest"
    assert base.result_key("0" * 64) != changed.result_key("0" * 64), "a parameter change must change result keys"
    assert base.result_key("0" * 64) != base.result_key("1" * 64), "another input must have another key"


def test_digest_ignores_spelling_but_not_defaults(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("name: a\nsteps:\n  - decode\n  - resize: {size: 64}\n  - arrays\n")
    json_file = tmp_path / "p.json"
    json_file.write_text(json.dumps({"name": "b", "steps": [{"decode": {"mode": "RGB"}},
                         {"resize": {"size": 64, "mode": "shorter", "filter": "bilinear"}},
                         {"arrays": {"format": "npy"}}]}))
    assert load_pipeline(str(yaml_file)).digest == load_pipeline(str(json_file)).digest, \
        "the same pipeline written two ways must have one digest"


def test_step_versions_are_part_of_the_canonical_form() -> None:
    canonical = build_pipeline({"template": "imagenet-224"}).canonical()
    assert all(isinstance(s["version"], int) for s in canonical["steps"]), "each step carries its implementation version"


def test_shard_size_does_not_change_result_keys() -> None:
    a = build_pipeline({"template": "resnet-train-augment"})
    b = build_pipeline({"template": "resnet-train-augment", "overrides": {"arrays": {"shard_size": 8}}})
    assert a.digest != b.digest, "the pipeline digest covers the shard size"
    assert a.result_key("0" * 64) == b.result_key("0" * 64), "grouping samples into shards changes no sample"


def test_set_overrides_from_the_command_line() -> None:
    p = load_pipeline("imagenet-224", ["resize.size=300", "center_crop.size=[200, 100]"])
    assert p.steps[1].params["size"] == 300 and p.steps[2].params["size"] == [200, 100]
    with pytest.raises(PipelineError, match=r"^--set 'resize': expected STEP.PARAM=VALUE"):
        load_pipeline("imagenet-224", ["resize"])
