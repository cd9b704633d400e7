"""Shared fixtures: real S3 servers, and a check that no unexpected warnings were logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.daemon_logs import DAEMON_LOGS
from tests.faults.cases import TABLE, FaultCase, format_table
from tests.servers import S3Server, start_seaweedfs


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fail_on_warnings(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[None]:
    """A WARNING logged in-process, or a WARNING, ERROR or traceback in the log of a mount
    or gateway daemon, fails the test unless it is marked `expect_warnings`."""
    DAEMON_LOGS.begin_test()
    yield
    if request.node.get_closest_marker("expect_warnings"):
        return
    bad = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING and r.name.startswith("mlfs")]
    assert not bad, "unexpected warnings: " + "; ".join(r.getMessage() for r in bad)
    daemon = DAEMON_LOGS.problems()
    assert not daemon, "unexpected warnings in daemon logs:\n" + "\n".join(daemon[:20])


@pytest.fixture
def fault_case(request: pytest.FixtureRequest) -> FaultCase:
    """A row of the fault-case table for this test; call `.record(outcome, ...)` once."""
    case = FaultCase(request.node.name)
    TABLE.append(case)
    return case


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TABLE:
        return
    terminalreporter.section(f"fault cases ({len(TABLE)})")
    for line in format_table(TABLE):
        terminalreporter.write_line(line)
