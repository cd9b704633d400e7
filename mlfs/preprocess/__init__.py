"""Preprocessing runner: declarative image pipelines whose results are cached by content."""
