"""JSON log lines: one object per line with the context fields call sites pass."""

from __future__ import annotations

import io
import json
import logging

from mlfs.log import configure


def test_json_line_carries_context_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure(logging.INFO, json_lines=True, stream=stream)
    try:
        logging.getLogger("mlfs.fetch.fetcher").info(
            "retrying %s chunk %d", "model.safetensors", 3,
            extra={"file": "model.safetensors", "chunk": 3, "bucket": "b", "key": "k", "attempt": 2})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = json.loads(stream.getvalue().strip())
    assert line["event"] == "retrying model.safetensors chunk 3"
    assert line["level"] == "info"
    assert (line["file"], line["chunk"], line["bucket"], line["key"], line["attempt"]) == (
        "model.safetensors", 3, "b", "k", 2)
    assert line["time"].endswith("Z")
