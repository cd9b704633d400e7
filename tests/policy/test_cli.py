"""`mlfs rules validate | explain | test` through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlfs.cli.rules import rules
from tests.policy.helpers import CHUNK, HF_MODEL, make_manifest, write

GOOD = """
use: [random-access-embeddings]
rules:
  - id: big-blobs
    priority: 300
    conditions: [{property: file.size, operator: gt, value: 10MiB}]
    actions: {prioritize: -5}
"""


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.json"
    path.write_text(make_manifest({**HF_MODEL, "emb/table_embeddings.npy": 64 * CHUNK}).dumps())
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(rules, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_validate_ok(tmp_path: Path) -> None:
    code, out, _ = run("validate", str(write(tmp_path, "good.yaml", GOOD)))
    assert (code, out) == (0, "ok: 1 file(s)\n")


def test_validate_prints_every_problem_of_every_file(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "rules:\n  - id: x\n    priority: one\n    actions: {cache: hot}\n")
    b = write(tmp_path, "b.yaml", "use: [nope]\n")
    good = write(tmp_path, "good.yaml", GOOD)
    code, _, err = run("validate", str(a), str(good), str(b))
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith(f"{a}:3: rule 'x' priority: expected an integer")
    assert lines[1].startswith(f"{a}:4: rule 'x' cache: expected one of high, normal, low, none, got 'hot'")
    assert lines[2].startswith(f"{b}:1: unknown template 'nope'")
    assert lines[3] == "mlfs: 3 problem(s) in rule files"


def test_validate_checks_pin_budget_against_store_size(tmp_path: Path) -> None:
    f = write(tmp_path, "b.yaml", "pin_budget: 2GiB\n" + GOOD)
    assert run("validate", str(f), "--store-size", "4GiB")[0] == 0
    code, _, err = run("validate", str(f), "--store-size", "1GiB")
    assert code == 1 and f"{f}:1: pin_budget 2.0 GiB is above the chunk store size 1.0 GiB" in err


def test_explain_table(manifest_file: Path, tmp_path: Path) -> None:
    user = write(tmp_path, "good.yaml", GOOD)
    code, out, _ = run("explain", str(manifest_file), "--rules", str(user), "--workload", "vllm:inference")
    assert code == 0
    block = out.split("\n\n")
    config = next(b for b in block if b.startswith("config.json"))
    assert "llm-configs-pinned" in config and "won: prefetch, pin, cache, prioritize" in config
    assert "=> prefetch whole at mount" in config
    emb = next(b for b in block if b.startswith("emb/table_embeddings.npy"))
    assert "embeddings-random-pinned" in emb and "score 0.67/0.60" in emb and "big-blobs" in emb


def test_explain_json(manifest_file: Path) -> None:
    code, out, _ = run("explain", str(manifest_file), "--json", "--env", "prod", "--store-size", "10GiB")
    doc = json.loads(out)
    assert code == 0 and doc["pin_budget"] == 5 * 1024**3
    files = {f["path"]: f for f in doc["files"]}
    shard = files["model-00001-of-00002.safetensors"]
    assert shard["decision"]["prefetch"]["what"] == "safetensors"
    assert {m["rule"] for m in shard["matched"]} >= {"safetensors-header-then-tensors", "prod-wide-streaming"}


def test_explain_with_invalid_rules_is_one_line_and_exit_1(manifest_file: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "rules:\n  - id: x\n    priority: 1\n    actions: {pin: maybe}\n")
    code, out, err = run("explain", str(manifest_file), "--rules", str(bad))
    assert code == 1 and out == ""
    assert err == f"mlfs: {bad}:4: rule 'x' pin: expected true or false, got a string 'maybe'\n"


def test_rules_test_replays_a_trace(manifest_file: Path, tmp_path: Path) -> None:
    user = write(tmp_path, "good.yaml", GOOD)
    trace = write(tmp_path, "t.jsonl", "\n".join(
        json.dumps({"t": i * 0.01, "path": "emb/table_embeddings.npy", "offset": o * CHUNK, "size": 512, "pid": 9})
        for i, o in enumerate((40, 2, 33, 7, 21))) + "\n")
    code, out, _ = run("test", str(user), "--manifest", str(manifest_file), "--trace", str(trace))
    assert code == 0
    # the name alone wins the embeddings rule at mount; random reads change nothing after
    mount_row = next(r for r in out.splitlines() if "emb/table_embeddings.npy" in r)
    assert mount_row.startswith("mount") and "pin" in mount_row and "embeddings-random-pinned" in mount_row
    assert not [r for r in out.splitlines() if r.startswith("0.")]
    code, out, _ = run("test", str(user), "--manifest", str(manifest_file), "--trace", str(trace), "--all")
    rows = [r for r in out.splitlines() if r.startswith("0.")]
    assert len(rows) == 5 and "random" in rows[-1] and "embeddings-random-pinned" in rows[-1]
    code, out, _ = run("test", str(user), "--manifest", str(manifest_file), "--trace", str(trace), "--json", "--all")
    steps = json.loads(out)["steps"]
    reads = [s for s in steps if s["t"] is not None]
    assert len(reads) == 5 and reads[-1]["pattern"] == "random" and reads[-1]["decision"]["pin"] is True


def test_rules_test_reports_a_bad_trace_line(manifest_file: Path, tmp_path: Path) -> None:
    trace = write(tmp_path, "t.jsonl", '{"t": 0, "path": "missing.bin", "offset": 0, "size": 1}\n')
    code, _, err = run("test", "--manifest", str(manifest_file), "--trace", str(trace))
    assert code == 1 and err.startswith(f"mlfs: {trace}:1: path 'missing.bin' is not a file of the manifest")
