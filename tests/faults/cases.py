"""The fault-case table: every hostile-input or fault test records one row, and the
suite prints them together at the end (see tests/conftest.py).

A row says what was tried and what it cost: the outcome a user saw, how many wrong
bytes were served (must be 0), how many acknowledged bytes were lost (must be 0), and
how long the case took. Recording a row with wrong or lost bytes fails the test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class FaultCase:
    name: str
    outcome: str = "not recorded"
    wrong_bytes: int = 0
    bytes_lost: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def record(self, outcome: str, wrong_bytes: int = 0, bytes_lost: int = 0) -> None:
        self.outcome = outcome
        self.wrong_bytes = wrong_bytes
        self.bytes_lost = bytes_lost
        self.seconds = time.monotonic() - self.started
        assert wrong_bytes == 0, f"{self.name}: {wrong_bytes} wrong bytes served"
        assert bytes_lost == 0, f"{self.name}: {bytes_lost} acknowledged bytes lost"


TABLE: list[FaultCase] = []


def format_table(rows: list[FaultCase]) -> list[str]:
    header = ("case", "outcome", "wrong bytes", "bytes lost", "time s")
    body = [(r.name, r.outcome, str(r.wrong_bytes), str(r.bytes_lost), f"{r.seconds:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *body]]
