"""Decisions, load order, overrides, weights, reloads: PolicyEngine end to end without FUSE."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlfs.policy import (
    AccessContext,
    FileContext,
    FileDecision,
    PolicyEngine,
    RuleError,
    SystemContext,
    WorkloadContext,
)
from tests.policy.helpers import CHUNK, HF_MODEL, make_manifest, write


def file(path: str, size: int = 1000) -> FileContext:
    return FileContext(path=path, size=size, format=FileContext.from_entry(make_manifest({path: size}).files[0]).format)


@pytest.fixture
def hf_engine() -> PolicyEngine:
    return PolicyEngine.load(make_manifest(HF_MODEL))


def test_builtin_rules_for_a_hugging_face_model(hf_engine: PolicyEngine) -> None:
    manifest = make_manifest(HF_MODEL)
    config = hf_engine.decide(FileContext.from_entry(manifest.file("config.json")))
    assert (config.prefetch_when, config.prefetch_what, config.pin, config.cache_priority) == (
        "mount", "whole", True, "high")
    assert config.rule_ids == ("llm-configs-pinned",)

    shard = hf_engine.decide(FileContext.from_entry(manifest.file("model-00001-of-00002.safetensors")))
    assert (shard.prefetch_when, shard.prefetch_what, shard.cache_priority) == ("mount", "safetensors", "high")
    assert shard.rule_for("prefetch") == "llm-weights-at-mount"
    assert not shard.pin


def test_dataset_shards_stream_with_drop_behind() -> None:
    manifest = make_manifest({"train/part-0000.parquet": 300 * CHUNK, "train/x.tfrecord-00001-of-00010": 99 * CHUNK})
    engine = PolicyEngine.load(manifest)
    for entry in manifest.files:
        d = engine.decide(FileContext.from_entry(entry))
        assert d.drop_behind and d.stream_window_max >= 32 and d.prefetch_when is None
        assert d.cache_priority in ("low", "none")


def test_a_file_no_rule_matches_gets_the_plain_defaults(hf_engine: PolicyEngine) -> None:
    d = hf_engine.decide(file("notes/readme.xyz", 5 * CHUNK))
    assert d == FileDecision()


def test_access_rules_need_reads_and_follow_the_pattern() -> None:
    engine = PolicyEngine.load(make_manifest({"blob.bin": 10 * CHUNK}))
    blob = FileContext("blob.raw", 10 * CHUNK, "unknown")
    assert engine.decide(blob).stream_window_max == 8  # at open: no access context yet
    seq = engine.decide(blob, access=AccessContext(pattern="sequential"))
    assert seq.stream_window_max == 16 and seq.rule_ids == ("sequential-reads-grow-window",)
    rnd = engine.decide(blob, access=AccessContext(pattern="random"))
    assert (rnd.stream_window_start, rnd.stream_window_max) == (1, 1)


def test_user_file_overrides_by_id_and_switches_off(tmp_path: Path) -> None:
    user = write(tmp_path, "user.yaml", """
        rules:
          - id: llm-configs-pinned            # same id: replaces the template's rule
            priority: 110
            conditions: [{property: file.name, operator: eq, value: config.json}]
            actions: {prefetch: {when: open, what: head, bytes: 64KiB}}
          - {id: small-text-at-mount, enabled: false}
        """)
    manifest = make_manifest(HF_MODEL)
    engine = PolicyEngine.load(manifest, user_files=[user])
    config = engine.decide(FileContext.from_entry(manifest.file("config.json")))
    assert (config.prefetch_when, config.prefetch_what, config.prefetch_bytes) == ("open", "head", 64 * 1024)
    assert not config.pin  # the replaced rule pinned; the new one does not
    tokenizer = engine.decide(FileContext.from_entry(manifest.file("tokenizer.json")))
    assert tokenizer.prefetch_when is None  # neither the old llm rule nor the switched-off default apply
    assert "small-text-at-mount" in engine.ruleset.switched_off


def test_environment_layer_sits_between_plugins_and_user(tmp_path: Path) -> None:
    manifest = make_manifest(HF_MODEL)
    shard = FileContext.from_entry(manifest.file("model-00001-of-00002.safetensors"))
    serving = WorkloadContext("vllm", "inference")
    prod = PolicyEngine.load(manifest, env="prod", store_size=100 * 1024**3)
    assert prod.decide(shard, workload=serving).rule_for("prefetch") == "prod-weights-at-mount"
    training = prod.decide(shard, workload=WorkloadContext("torchrun", "training"))
    assert training.rule_for("prefetch") == "llm-weights-at-mount"
    assert prod.pin_budget == 50 * 1024**3
    assert [layer.split(":")[0] for layer in prod.ruleset.layers][-1] == "env prod"

    user = write(tmp_path, "user.yaml", "rules:\n  - {id: prod-weights-at-mount, enabled: false}\n"
                 "  - {id: llm-weights-at-mount, enabled: false}\n")
    mine = PolicyEngine.load(manifest, user_files=[user], env="prod")
    assert mine.decide(shard, workload=serving).prefetch_when == "open"


def test_on_a_priority_tie_the_later_layer_decides(tmp_path: Path) -> None:
    user = write(tmp_path, "user.yaml", """
        rules:
          - id: my-configs
            priority: 110                     # same as llm-configs-pinned from the plugin layer
            conditions: [{property: file.format, operator: eq, value: json}]
            actions: {cache: low}
        """)
    manifest = make_manifest(HF_MODEL)
    d = PolicyEngine.load(manifest, user_files=[user]).decide(FileContext.from_entry(manifest.file("config.json")))
    assert d.cache_priority == "low" and d.rule_for("cache") == "my-configs"
    assert d.rule_for("pin") == "llm-configs-pinned"
    assert d.rule_ids == ("my-configs", "llm-configs-pinned")


def test_weighted_conditions_reach_a_threshold(tmp_path: Path) -> None:
    manifest = make_manifest({"emb/user_embedding.bin": 100 * CHUNK, "other.raw": 100 * CHUNK})
    engine = PolicyEngine.load(manifest, templates=["random-access-embeddings"])
    by_name = FileContext("emb/user_embedding.bin", 100 * CHUNK, "unknown")
    by_access = FileContext("other.raw", 100 * CHUNK, "unknown")
    # the name weighs 2 of 3 (0.67 >= 0.6): enough alone; random access alone (0.33) is not
    assert engine.decide(by_name).pin
    assert not engine.decide(by_access, access=AccessContext(pattern="random")).pin
    explanation = engine.explain(by_access, access=AccessContext(pattern="random"))
    score = {m.rule.id: m.score for m in explanation.matches}["embeddings-random-pinned"]
    assert score == pytest.approx(1 / 3)


def test_conditions_on_unknown_contexts_do_not_match(tmp_path: Path) -> None:
    user = write(tmp_path, "user.yaml", """
        rules:
          - id: low-memory-no-prefetch
            priority: 900
            conditions: [{property: system.free_memory, operator: lt, value: 1GiB}]
            actions: {prefetch: {when: never}}
        """)
    manifest = make_manifest(HF_MODEL)
    engine = PolicyEngine.load(manifest, user_files=[user])
    config = FileContext.from_entry(manifest.file("config.json"))
    assert engine.decide(config).prefetch_when == "mount"
    assert engine.decide(config, system=SystemContext()).prefetch_when == "mount"
    assert engine.decide(config, system=SystemContext(free_memory=512 * 1024**2)).prefetch_when is None


def test_path_globs_stay_within_components_unless_doubled(tmp_path: Path) -> None:
    user = write(tmp_path, "user.yaml", """
        rules:
          - id: top-level-bins
            priority: 500
            conditions: [{property: file.path, operator: glob, value: "*/*.bin"}]
            actions: {prioritize: 7}
          - id: any-depth-ckpt
            priority: 501
            conditions: [{property: file.path, operator: glob, value: "ckpt/**/*.pt"}]
            actions: {prioritize: 9}
        """)
    engine = PolicyEngine.load(None, user_files=[user])
    assert engine.decide(FileContext("a/x.bin", 1)).fetch_priority == 7
    assert engine.decide(FileContext("a/b/x.bin", 1)).fetch_priority == 0
    assert engine.decide(FileContext("ckpt/x.pt", 1)).fetch_priority == 9
    assert engine.decide(FileContext("ckpt/1/2/x.pt", 1)).fetch_priority == 9


def test_decide_counts_matches_and_explain_does_not(hf_engine: PolicyEngine) -> None:
    config = FileContext("config.json", 700, "json")
    hf_engine.decide(config)
    hf_engine.decide(config)
    hf_engine.decide(config, count=False)
    hf_engine.explain(config)
    stats = hf_engine.counters.statistics()
    assert stats["llm-configs-pinned"].matched == 2
    assert stats["small-text-at-mount"].matched == 2  # matched, though it decided nothing


def test_explain_says_which_rule_won_which_action(hf_engine: PolicyEngine) -> None:
    ex = hf_engine.explain(FileContext("config.json", 700, "json"))
    won = {m.rule.id: m.won for m in ex.matches if m.matched}
    assert won == {"llm-configs-pinned": ("prefetch", "pin", "cache", "prioritize"), "small-text-at-mount": ()}
    doc = ex.to_json()
    assert doc["decision"]["prefetch"] == {"when": "mount", "what": "whole", "bytes": None}
    assert doc["matched"][0]["layer"] == "plugin safetensors"


def test_reload_swaps_rules_and_a_bad_file_keeps_the_old_ones(tmp_path: Path) -> None:
    rules = write(tmp_path, "user.yaml", """
        rules:
          - {id: mine, priority: 500, actions: {prioritize: 1}}
        """)
    engine = PolicyEngine.load(None, user_files=[rules])
    ctx = FileContext("x.raw", 10)
    assert engine.decide(ctx).fetch_priority == 1
    rules.write_text("rules:\n  - {id: mine, priority: 500, actions: {prioritize: 2}}\n")
    engine.reload()
    assert engine.decide(ctx).fetch_priority == 2
    before = engine.ruleset
    rules.write_text("rules:\n  - {id: mine, priority: 500, actions: {prioritize: lots}}\n")
    with pytest.raises(RuleError, match=r"user.yaml:2: rule 'mine' prioritize: expected an integer"):
        engine.reload()
    assert engine.ruleset is before and engine.decide(ctx).fetch_priority == 2
    assert engine.counters.statistics()["mine"].matched == 3  # counters survive reloads

    other = write(tmp_path, "other.yaml", "rules:\n  - {id: theirs, priority: 500, actions: {prioritize: 3}}\n")
    engine.reload(user_files=[other])
    assert engine.decide(ctx).rule_ids == ("theirs",)
    engine.reload()  # remembers the files of the last successful load
    assert engine.decide(ctx).fetch_priority == 3


def test_decisions_during_reloads_see_one_rule_set_or_the_other(tmp_path: Path) -> None:
    rules = write(tmp_path, "user.yaml", """
        rules:
          - {id: a, priority: 500, actions: {prioritize: 1, cache: low}}
        """)
    engine = PolicyEngine.load(None, user_files=[rules])
    ctx = FileContext("x.raw", 10)
    seen: set[tuple[int, str]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            d = engine.decide(ctx, count=False)
            seen.add((d.fetch_priority, d.cache_priority))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            value = (2, "high") if i % 2 else (1, "low")
            rules.write_text(f"rules:\n  - {{id: a, priority: 500, actions: {{prioritize: {value[0]}, cache: {value[1]}}}}}\n")
            engine.reload()
    finally:
        stop.set()
        thread.join()
    assert seen <= {(1, "low"), (2, "high")}
