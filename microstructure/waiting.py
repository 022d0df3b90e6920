"""Waiting in a long-running loop: sleep until the next round, or less when asked to stop.

It imports nothing of the package, so every layer (the Binance protocol, the collectors, the
feature refresher, the exporter, retention) waits the same way.
"""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, less when `stop` is set meanwhile; True when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
