"""Start a real `mlfs serve` process on a free loopback port (for tests and benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.daemon_logs import DAEMON_LOGS
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server, free_port, stop_process

READY_LINE = "mlfs gateway listening on"


@dataclass
class GatewayServer(S3Server):
    data_dir: Path | None = None

    def stop(self, grace: float = 10.0) -> None:
        stop_process(self.process, grace)


def start_gateway(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0,
    port: int | None = None,
) -> GatewayServer:
    """`python -m mlfs serve --data WORKDIR/data --listen 127.0.0.1:PORT ARGS...`, ready when it says so."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    port = port or free_port()
    log_path = workdir / f"serve-{port}.log"
    DAEMON_LOGS.watch(log_path, long_lived=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFS_"))}
    full_env.update(MLFS_ROOT_ACCESS_KEY=ACCESS_KEY, MLFS_ROOT_SECRET_KEY=SECRET_KEY)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "mlfs", "serve", "--data", str(data_dir), "--listen", f"127.0.0.1:{port}", *args]
    log_file = open(log_path, "wb")  # noqa: SIM115 - the child process owns it
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=full_env, cwd=Path(__file__).resolve().parents[2])
    log_file.close()
    deadline = time.monotonic() + timeout
    while READY_LINE not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"mlfs serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"mlfs serve did not become ready in {timeout}s; see {log_path}")
        time.sleep(0.05)
    return GatewayServer(endpoint=f"http://127.0.0.1:{port}", process=proc, log_path=log_path,
                         name="gateway", data_dir=data_dir)

