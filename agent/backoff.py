"""A jittered exponential backoff, shared by the shipper (reconnecting) and the daemon's
supervisor of the shipping child (restarting it); no grpc here, so the daemon can use it."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delays(first: float, cap: float, rng: random.Random) -> Callable[[], float]:
    """A 'full jitter' exponential backoff: each call returns the next delay (≤ cap)."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        ceiling = min(cap, first * (2**attempt))
        attempt = min(attempt + 1, 32)
        return rng.uniform(ceiling / 2, ceiling)

    return next_delay
