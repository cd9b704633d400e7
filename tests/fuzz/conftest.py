"""Hypothesis profiles: a few hundred examples per target in `make test`, at least
10,000 in `make test-long` (HYPOTHESIS_PROFILE=long). No deadline: nothing here is
judged by wall-clock time."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
