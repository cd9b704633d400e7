"""Resource limits that keep slow or hostile clients from holding the gateway's resources.

- Requests in flight are capped, in total and per client address: a request over a cap
  is answered `503 SlowDown` at once and holds nothing. Connections between requests
  are bounded by hypercorn's header timeout, so every open connection is either
  about to be closed or counted here.
- Transfers must keep a minimum average rate once a grace period has passed, in both
  directions: a body trickling one byte a minute, or a download nobody reads, is
  abandoned (`RequestTimeout`, or the connection is closed mid-download) instead of
  keeping a connection, a temp file and an upload open.
- Cache-through misses run under their own small limiter, with a size cap; anonymous
  callers never wait for one (503 when all are busy).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field

import trio

DAY = 24 * 3600


@dataclass(frozen=True)
class Limits:
    max_requests: int = 1024  # requests in flight, all clients together
    per_client_requests: int = 64  # requests in flight from one client address
    min_rate: float = 4096.0  # bytes per second, averaged over a transfer...
    rate_grace: float = 10.0  # ...once it has run this long
    # A transfer whose next block (request body in, download out) takes this long is
    # abandoned whatever its average rate.
    body_stall: float = field(default_factory=lambda: float(os.environ.get("MLFS_GATEWAY_BODY_TIMEOUT_SECONDS", "30")))
    upstream_max_size: int = 5 * 1024**3  # bytes one cache-through miss may fetch
    upstream_fetches: int = 4  # cache-through downloads at once
    upload_expiry: float = 7 * DAY  # multipart uploads idle this long are aborted


class RequestSlots:
    """Admission of requests against the total and per-client caps."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.by_client: Counter[str] = Counter()

    def take(self, client: str) -> bool:
        """Count a request in; False (counting nothing) if a cap is reached."""
        if self.total >= self.limits.max_requests or self.by_client[client] >= self.limits.per_client_requests:
            return False
        self.total += 1
        self.by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]


class TransferClock:
    """How long the next step of a transfer may take without dropping below the minimum rate."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.started = trio.current_time()
        self.done = 0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes

    def time_left(self, cap: float = math.inf) -> float:
        """Seconds until the average rate would fall below the minimum (at most `cap`)."""
        if self.limits.min_rate <= 0:
            return cap
        due = self.started + self.limits.rate_grace + self.done / self.limits.min_rate
        return max(0.0, min(cap, due - trio.current_time()))
