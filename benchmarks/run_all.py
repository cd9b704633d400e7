"""Run every benchmark, one after the other, each with its default settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["peer_bench.py", "mount_bench.py", "policy_bench.py", "gateway_bench.py", "preprocess_bench.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n### {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
