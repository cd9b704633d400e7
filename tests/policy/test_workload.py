"""Workload detection from MLFS_WORKLOAD, a command line and an environment."""

from __future__ import annotations

import os

import pytest

from mlfs.policy import WorkloadContext, detect_workload, parse_workload, process_cmdline


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["/usr/bin/torchrun", "--nproc-per-node=8", "train.py"], {}, ("torchrun", "training")),
    (["python", "-m", "torch.distributed.run", "x.py"], {}, ("torchrun", "training")),
    (["vllm", "serve", "/mnt/model"], {}, ("vllm", "inference")),
    (["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"], {}, ("vllm", "inference")),
    (["python", "run_clm.py", "--model_name_or_path", "/mnt/transformers-model"], {}, ("transformers", "unknown")),
    (["python", "-m", "transformers.commands.serving"], {}, ("transformers", "inference")),
    (["accelerate", "launch", "finetune.py"], {}, ("transformers", "training")),
    (["python", "worker.py"], {"LOCAL_RANK": "0", "WORLD_SIZE": "8"}, ("torchrun", "training")),
    (["python", "fit.py"], {"TF_CONFIG": "{}"}, ("tensorflow", "training")),
    (["python", "/srv/app/serve.py", "--model", "/models/trainee-7b"], {}, ("unknown", "inference")),
    (["bash"], {}, ("unknown", "unknown")),
    ([], {}, ("unknown", "unknown")),
])
def test_detect_workload_from_command_line(argv: list[str], env: dict[str, str], expected: tuple[str, str]) -> None:
    w = detect_workload(argv, env)
    assert (w.framework, w.phase) == expected


def test_explicit_workload_wins() -> None:
    w = detect_workload(["torchrun", "train.py"], {"MLFS_WORKLOAD": "vllm:inference"})
    assert w == WorkloadContext("vllm", "inference")


def test_parse_workload_rejects_unknown_names() -> None:
    assert parse_workload("pytorch") == WorkloadContext("pytorch", "unknown")
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        parse_workload("jax:training")
    with pytest.raises(ValueError, match="unknown phase 'serving'"):
        parse_workload("vllm:serving")


def test_process_cmdline_reads_proc() -> None:
    argv = process_cmdline(os.getpid())
    assert argv and all(isinstance(a, str) for a in argv)
    assert process_cmdline(2**22 + 12345) == []
