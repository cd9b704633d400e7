"""Daemon logs are part of every test's warning check.

Mounts and gateways run in subprocesses, so their warnings never reach pytest's log
capture. Each daemon's log file is watched instead: the part written while a test ran
must hold no WARNING, ERROR or traceback unless the test is marked `expect_warnings`
(see the `fail_on_warnings` fixture in tests/conftest.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The daemons log "TIME LEVEL logger: message" (mlfs.log.configure); JSON lines say
# "level": "warning". A traceback is a failure whatever logged it.
_BAD_LINE = re.compile(
    r"^\S+ \S+ (WARNING|ERROR|CRITICAL) |\"level\": \"(warning|error|critical)\"|^Traceback \(most recent call last\)"
)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class DaemonLogs:
    def __init__(self) -> None:
        self.long_lived: set[Path] = set()  # logs of daemons that outlive one test
        self.offsets: dict[Path, int] = {}  # log → where the current test's part starts

    def watch(self, path: Path, long_lived: bool = False) -> None:
        """Check `path` from its current end on, until the current test ends (or always)."""
        path = Path(path).absolute()
        if long_lived:
            self.long_lived.add(path)
        self.offsets.setdefault(path, _size(path))

    def begin_test(self) -> None:
        self.offsets = {p: _size(p) for p in self.long_lived}

    def problems(self) -> list[str]:
        """Unexpected lines written to watched logs since the test began."""
        found = []
        for path, start in sorted(self.offsets.items()):
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    text = fh.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            found += [f"{path.name}: {line}" for line in text.splitlines() if _BAD_LINE.search(line)]
        return found


DAEMON_LOGS = DaemonLogs()


def mount_log_path(extra: tuple[str | os.PathLike[str], ...], env: dict[str, str]) -> Path:
    """Where `mlfs mount ... EXTRA` run with `env` writes its daemon log."""
    args = [str(a) for a in extra]
    for flag in ("--log-file", "--cache"):
        if flag in args:
            value = Path(args[args.index(flag) + 1])
            return value if flag == "--log-file" else value / "mount.log"
    for i, arg in enumerate(args[:-1]):
        if arg == "-o":
            for item in args[i + 1].split(","):
                key, _, value = item.partition("=")
                if key.replace("-", "_") == "log_file":
                    return Path(value)
                if key == "cache":
                    return Path(value) / "mount.log"
    if env.get("MLFS_CACHE"):
        return Path(env["MLFS_CACHE"]) / "mount.log"
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", os.path.expanduser("~")), ".cache")
    return Path(base) / "mlfs" / "mount.log"
