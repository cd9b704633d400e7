"""Fixtures for the preprocessing tests: a real `mlfs serve`, generated images, the real CLI."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.gateway.server import GatewayServer, start_gateway
from tests.mlfs_cli import mlfs

BAD_LOG_MARKERS = ("WARNING", "ERROR", "Traceback")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway(tmp_path_factory.mktemp("pp-gateway"))
    try:
        yield server
    finally:
        server.stop()
        log = server.log_path.read_text(errors="replace") if server.log_path else ""
        bad = [line for line in log.splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
        assert not bad, f"mlfs serve logged problems: {bad[:5]}"
        assert server.process.returncode == 0, f"mlfs serve did not stop cleanly; see {server.log_path}"


def jpeg(seed: int, size: tuple[int, int] = (48, 40), quality: int = 90) -> bytes:
    """A generated JPEG (smooth gradient plus noise, so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(0, 200, w, dtype=np.float64)[None, :, None] + rng.integers(0, 55, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def upload(client: Any, bucket: str, objects: dict[str, bytes], threads: int = 16) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


@dataclass
class RunResult:
    returncode: int
    summary: dict[str, Any]
    stderr: str


def preprocess_run(env: dict[str, str], *args: str | Path) -> RunResult:
    """`mlfs preprocess run ARGS --json -q`; the JSON summary and stderr."""
    proc = mlfs("preprocess", "run", *args, "--json", "-q", env=env, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except ValueError:
        raise AssertionError(f"no JSON summary: {proc.stdout!r} {proc.stderr!r}") from None
    assert summary or proc.returncode == 1, f"rc {proc.returncode} without a summary: {proc.stderr}"
    return RunResult(proc.returncode, summary, proc.stderr)


def counts(summary: dict[str, Any]) -> dict[str, int]:
    return {k: summary[k] for k in ("done", "cached", "failed", "decoded")}

