"""Errors of the policy engine.

Rule files are written by hand, so an error must say where (file:line) and what was
expected. Parsing collects every problem it finds (`mlfs rules validate` prints them
all); `RuleError` carries that list and reads as the first problem on one line.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from mlfs.errors import MlfsError


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rule file; `line` is 1-based, 0 when no line applies."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class RuleError(MlfsError):
    """Rules are invalid; nothing was changed. `problems` lists every problem found."""

    errno = errno.EINVAL

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("rules", 0, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        first = str(self.problems[0]) if self.problems else "invalid rules"
        more = len(self.problems) - 1
        if more:
            first += f" (and {more} more; see 'mlfs rules validate')"
        super().__init__(first)


class FormatError(MlfsError):
    """File bytes do not have the structure their format promises (e.g. a safetensors header)."""

    errno = errno.EIO
