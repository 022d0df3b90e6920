"""What every stage of ingest reports to: health counters per stream and the ingest_events log.

- `Health` / `StreamHealth`: messages, malformed messages, reconnects and last-message time per
  stream, shown by the collectors' summaries (and by GET /health of `collect all`);
- `EventLog`: ingest_events rows (reconnect, resync, gap_fill, poll_miss, malformed ...), written
  in small batches, never blocking a collector;
- `note_malformed`: a message that cannot be used, counted, logged (the first ones with their text)
  and recorded in ingest_events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

MAX_LOGGED_MALFORMED = 20  # per stream: the first ones are logged with their text, then counted only


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class StreamHealth:
    messages: int = 0
    malformed: int = 0
    reconnects: int = 0
    stale_reconnects: int = 0
    last_recv_ms: int = 0


@dataclass
class Health:
    """One health view for every collector of a process: counters by name, printed by summary()."""

    streams: dict[str, StreamHealth] = field(default_factory=lambda: defaultdict(StreamHealth))
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def stream(self, name: str) -> StreamHealth:
        return self.streams[name]

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def malformed_total(self) -> int:
        return sum(s.malformed for s in self.streams.values()) + self.counters.get("malformed", 0)

    def summary(self) -> dict[str, Any]:
        return {
            "streams": {k: vars(v).copy() for k, v in self.streams.items()},
            "counters": dict(self.counters),
        }

    def lines(self) -> list[str]:
        out = []
        for name, s in sorted(self.streams.items()):
            out.append(
                f"  {name}: {s.messages} messages, {s.malformed} malformed, {s.reconnects} reconnects "
                f"({s.stale_reconnects} for silence)"
            )
        for name, n in sorted(self.counters.items()):
            out.append(f"  {name}: {n}")
        return out


class EventLog:
    """ingest_events rows (resync, poll_miss, malformed, reconnect, ...), written in small batches.

    record() never blocks or fails; flush() writes what is pending (kept for the next try when the
    database does not answer).
    """

    def __init__(self, dsn: str | None) -> None:
        self.dsn = dsn
        self.pending: list[tuple[datetime, str, str | None, str, str]] = []
        self.written = 0
        self.counts: dict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()

    def record(self, collector: str, symbol: str | None, kind: str, detail: dict[str, Any]) -> None:
        self.counts[kind] += 1
        self.pending.append(
            (datetime.now(tz=UTC), collector, symbol, kind, json.dumps(detail, default=str)[:8000])
        )

    async def flush(self) -> None:
        if not self.pending or not self.dsn:
            return
        async with self._lock:
            batch, self.pending = self.pending, []
            try:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.executemany(
                        "INSERT INTO ingest_events (ts, collector, symbol, kind, detail) "
                        "VALUES ($1, $2, $3, $4, $5::jsonb)",
                        batch,
                    )
                finally:
                    await conn.close()
                self.written += len(batch)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("ingest_events: %d rows not written yet (%s)", len(batch), exc)
                self.pending = batch + self.pending

    async def run(self, stop: asyncio.Event, interval: float = 2.0) -> None:
        while not stop.is_set():
            await sleep_or_stop(stop, interval)
            await self.flush()


def note_malformed(
    h: StreamHealth,
    events: EventLog | None,
    collector: str,
    symbol: str | None,
    name: str,
    text: Any,
    exc: BaseException,
) -> None:
    h.malformed += 1
    sample = text if isinstance(text, str) else json.dumps(text, default=str)
    if h.malformed <= MAX_LOGGED_MALFORMED:
        log.warning("%s: malformed message skipped (%s: %s): %.300s", name, type(exc).__name__, exc, sample)
    elif h.malformed == MAX_LOGGED_MALFORMED + 1:
        log.warning("%s: more malformed messages; counting without logging each", name)
    if events is not None and h.malformed <= 1000:
        events.record(
            collector,
            symbol,
            "malformed",
            {"stream": name, "error": f"{type(exc).__name__}: {exc}", "text": sample[:500]},
        )
