"""The running of a live collector, alike for every one: its streams, its stop, its unusable REST replies.

- `start_stream`: join the shared connections of `collect all`, or open the collector's own;
- `stop_after`: the `--live-seconds` timer (sleeping until the next flush or stop: waiting.sleep_or_stop);
- `note_bad_reply`: a REST reply that arrived but cannot be used counts as a malformed message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from microstructure.config import Settings
from microstructure.ingest.binance.rest import MalformedReply
from microstructure.ingest.binance.streams import Handler, SharedStreams
from microstructure.ingest.health import EventLog, Health, StreamHealth, note_malformed


def start_stream(
    settings: Settings,
    streams: Sequence[str],
    handler: Handler,
    *,
    shared: SharedStreams | None,
    stop: asyncio.Event,
    health: Health,
    events: EventLog | None,
    collector: str,
    stale_timeout: float,
) -> tuple[SharedStreams, asyncio.Task[None] | None]:
    """Register with the shared connections, or make this collector's own (and a task running them)."""
    if shared is not None:
        shared.register(streams, handler, collector)
        return shared, None
    own = SharedStreams(
        settings.ws_url, expected=1, health=health, events=events, stale_timeout=stale_timeout, name=collector
    )
    own.register(streams, handler, collector)
    return own, asyncio.create_task(own.run(stop), name=f"{collector}-streams")


def stop_after(stop: asyncio.Event, live_seconds: float | None) -> asyncio.Task[None] | None:
    if live_seconds is None:
        return None

    async def later() -> None:
        await asyncio.sleep(live_seconds)
        stop.set()

    return asyncio.create_task(later())


def note_bad_reply(
    h: StreamHealth,
    events: EventLog | None,
    collector: str,
    symbol: str | None,
    name: str,
    exc: BaseException,
    reply: Any,
    replied: bool,
) -> None:
    """A REST reply that arrived but cannot be used (not JSON: MalformedReply with its text; or
    refused by the parser: the decoded `reply`) counts as a malformed message; a request that got no
    reply (network error, 5xx, retries exhausted) does not."""
    if isinstance(exc, MalformedReply):
        note_malformed(h, events, collector, symbol, name, exc.text, exc)
    elif replied:
        note_malformed(h, events, collector, symbol, name, reply, exc)
