"""The warning check sees the daemons' logs, not only the pytest process's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon_logs import DAEMON_LOGS, DaemonLogs
from tests.fuse.conftest import Artifact
from tests.mlfs_cli import mounted


@pytest.mark.expect_warnings
def test_a_warning_in_a_mount_daemon_log_is_seen(artifact: Artifact, tmp_path: Path) -> None:
    # A run directory others may write: the daemon refuses it and warns in its own log.
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    env = dict(artifact.env, MLFS_RUN_DIR=str(run))
    with mounted(artifact.manifest, tmp_path / "mnt", env, "--cache", tmp_path / "cache") as mp:
        assert (mp / "config.json").read_bytes() == (artifact.local / "config.json").read_bytes()
    found = DAEMON_LOGS.problems()
    assert any("WARNING mlfs.fuse.session: cannot publish mount statistics" in line for line in found), found


def test_only_the_part_written_during_the_test_counts(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("2026-01-01 00:00:00,000 WARNING mlfs.gateway: from an earlier test\n")
    logs = DaemonLogs()
    logs.watch(log, long_lived=True)
    logs.begin_test()
    with open(log, "a") as fh:
        fh.write("2026-01-01 00:00:01,000 INFO mlfs.gateway: fine\n")
    assert logs.problems() == []
    with open(log, "a") as fh:
        fh.write('{"level": "error", "msg": "x"}\nTraceback (most recent call last):\n')
    assert logs.problems() == ['serve.log: {"level": "error", "msg": "x"}',
                               "serve.log: Traceback (most recent call last):"]
    logs.begin_test()
    assert logs.problems() == []
