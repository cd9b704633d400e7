"""Policy engine: YAML rules decide, per file and per moment, prefetch, streaming and pinning.

FUSE-free: the mount builds contexts, asks `PolicyEngine.decide()`, and acts on the
`FileDecision`. Rule format and load order: rules/README.md.
"""

from mlfs.policy.access import AccessTracker
from mlfs.policy.context import AccessContext, FileContext, SystemContext
from mlfs.policy.counters import RuleCounters, RuleStats
from mlfs.policy.decision import FileDecision
from mlfs.policy.engine import Explanation, PolicyEngine, RuleMatch
from mlfs.policy.errors import FormatError, Problem, RuleError
from mlfs.policy.formats import detect_format, safetensors_header_length, safetensors_tensor_ranges
from mlfs.policy.layers import RuleSet
from mlfs.policy.learned import LearnedChunk, LearnedPrefetch
from mlfs.policy.plugins import PLUGINS, FrameworkPlugin, detect_plugins
from mlfs.policy.workload import WorkloadContext, detect_workload, parse_workload, process_cmdline

__all__ = [
    "PLUGINS",
    "AccessContext",
    "AccessTracker",
    "Explanation",
    "FileContext",
    "FileDecision",
    "FormatError",
    "FrameworkPlugin",
    "LearnedChunk",
    "LearnedPrefetch",
    "PolicyEngine",
    "Problem",
    "RuleCounters",
    "RuleError",
    "RuleMatch",
    "RuleSet",
    "RuleStats",
    "SystemContext",
    "WorkloadContext",
    "detect_format",
    "detect_plugins",
    "detect_workload",
    "parse_workload",
    "process_cmdline",
    "safetensors_header_length",
    "safetensors_tensor_ranges",
]
