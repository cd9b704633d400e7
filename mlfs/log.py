"""Logging setup: human-readable lines, or JSON lines for log collectors.

A JSON line carries `time`, `level`, `event` (the message) and `logger`, plus the
context fields a call site passes with `extra=` (see `CONTEXT_FIELDS`): which file and
chunk, which bucket and key, which attempt, how long it took.
"""

from __future__ import annotations

import json
import logging
import time

CONTEXT_FIELDS = ("file", "chunk", "bucket", "key", "attempt", "duration", "mountpoint", "version")


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: int = logging.WARNING, json_lines: bool = False, stream=None) -> None:
    handler = logging.StreamHandler(stream)
    if json_lines:
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore is chatty at INFO/DEBUG and says nothing a user of mlfs needs.
    logging.getLogger("botocore").setLevel(max(level, logging.WARNING))
    logging.getLogger("urllib3").setLevel(max(level, logging.WARNING))
