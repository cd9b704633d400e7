"""A command run while a mount is live (`mlfs mount M MNT -- CMD ARGS...`).

The mount process starts CMD once the mount is ready (mount-time prefetch done),
forwards the signals a container runtime or shell sends to it, and unmounts when CMD
exits; CMD's exit status becomes mlfs's (128 + N when a signal N ended it, as shells
report it).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal

import trio

from mlfs.errors import ConfigError

log = logging.getLogger(__name__)

# SIGHUP stays with mlfs (it reloads the policy rules); these go to CMD.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class MountedCommand:
    def __init__(self, argv: list[str]) -> None:
        if not argv:
            raise ConfigError("nothing to run after '--' (usage: mlfs mount MANIFEST MOUNTPOINT -- CMD ARGS...)")
        program = argv[0]
        if "/" not in program and shutil.which(program) is None:
            raise ConfigError(f"command not found: {program}")
        if "/" in program and not os.access(program, os.X_OK):
            raise ConfigError(f"command not executable: {program}")
        self.argv = list(argv)
        self.status: int | None = None
        self._process: trio.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def run(self) -> int:
        """Start CMD, wait for it, and return its exit status (shell convention)."""
        try:
            self._process = await trio.lowlevel.open_process(self.argv)
        except OSError as exc:
            log.error("cannot run %s: %s", self.argv[0], exc.strerror or exc)
            self.status = 126
            return self.status
        log.info("running %s (pid %d)", " ".join(self.argv), self._process.pid)
        code = await self._process.wait()
        self.status = 128 - code if code < 0 else code
        log.info("%s exited with status %d", self.argv[0], self.status)
        return self.status

    def forward(self, signum: int) -> bool:
        """Send `signum` to CMD if it runs; False if there is no CMD to receive it."""
        if not self.running:
            return False
        try:
            self._process.send_signal(signum)
        except ProcessLookupError:
            return False
        return True
