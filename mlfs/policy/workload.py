"""Which framework is reading, and whether it trains or serves.

Precedence: an explicit MLFS_WORKLOAD (or the mount option of the same meaning) wins;
otherwise the reading process's command line and environment are read for well-known
launchers. Detection is a hint for rules, never a requirement: 'unknown' is normal.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

FRAMEWORKS = ("transformers", "vllm", "torchrun", "pytorch", "tensorflow", "unknown")
PHASES = ("inference", "training", "unknown")

_TRAINING_WORDS = ("train", "finetune", "fine_tune", "pretrain", "fit")
_INFERENCE_WORDS = ("serve", "serving", "infer", "generate", "predict", "chat", "api_server")


@dataclass(frozen=True)
class WorkloadContext:
    framework: str = "unknown"
    phase: str = "unknown"

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {self.framework!r}; expected one of {', '.join(FRAMEWORKS)}")
        if self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; expected one of {', '.join(PHASES)}")


def parse_workload(text: str) -> WorkloadContext:
    """'vllm', 'transformers:inference', 'pytorch:training' → WorkloadContext (ValueError if bad)."""
    framework, _, phase = text.strip().partition(":")
    return WorkloadContext(framework or "unknown", phase or "unknown")


def detect_workload(cmdline: list[str], env: Mapping[str, str]) -> WorkloadContext:
    """Framework and phase from MLFS_WORKLOAD, else from a process's argv and environment."""
    explicit = env.get("MLFS_WORKLOAD")
    if explicit:
        return parse_workload(explicit)
    framework = _framework(cmdline, env)
    return WorkloadContext(framework, _phase(framework, cmdline, env))


def _framework(cmdline: list[str], env: Mapping[str, str]) -> str:
    words = [a.lower() for a in cmdline]
    program = posixpath.basename(words[0]) if words else ""
    modules = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]
    text = " ".join(words)
    if program == "torchrun" or "torch.distributed.run" in modules or "torch.distributed.launch" in modules:
        return "torchrun"
    if program == "vllm" or any(m.startswith("vllm") for m in modules):
        return "vllm"
    if "transformers" in text or program in ("accelerate", "text-generation-launcher"):
        return "transformers"
    if "tensorflow" in text or "keras" in text or "TF_CONFIG" in env:
        return "tensorflow"
    # torchrun-started workers carry these even when their own argv says only 'python x.py'.
    if "LOCAL_RANK" in env and "WORLD_SIZE" in env:
        return "torchrun"
    if "torch" in text:
        return "pytorch"
    return "unknown"


def _phase(framework: str, cmdline: list[str], env: Mapping[str, str]) -> str:
    if framework == "vllm":
        return "inference"
    if framework == "torchrun":
        return "training"
    # Look at the program, the script and -m modules only, never at flag values: a
    # model path like /models/trainee-7b must not make a server look like training.
    words = [a.lower() for a in cmdline]
    names = [posixpath.basename(words[0])] if words else []
    names += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"]
    names += [posixpath.basename(w) for w in words[1:] if w.endswith(".py")][:1]
    if any(w in n for n in names for w in _TRAINING_WORDS):
        return "training"
    if any(w in n for n in names for w in _INFERENCE_WORDS):
        return "inference"
    if "TF_CONFIG" in env:
        return "training"
    return "unknown"


def process_cmdline(pid: int) -> list[str]:
    """argv of a running process from /proc (empty when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(64 * 1024)
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\x00") if a]
