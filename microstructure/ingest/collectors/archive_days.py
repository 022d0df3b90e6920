"""The days of a historical archive loader, and each day's archive loaded into one report.

- `resolve_days`: the complete UTC days of a run ([start, end] or the last N), on the exchange's clock;
- `load_archive_table`: download, verify and parse one data.binance.vision archive, a missing or
  refused one recorded in the report and in ingest_events;
- `HistoricalReport`: rows and archives per symbol, missing and refused archives, malformed rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp

from microstructure.config import Settings
from microstructure.ingest.health import EventLog

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass
class HistoricalReport:
    what: str
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    days_loaded: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    missing: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    malformed: int = 0
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [f"archives refused (checksum mismatch): {', '.join(self.refused)}"] if self.refused else []

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary_lines(self) -> list[str]:
        out = [f"{self.what}:"]
        for s in sorted(set(self.rows) | set(self.days_loaded)):
            out.append(f"  {s}: {self.rows.get(s, 0)} new rows from {self.days_loaded.get(s, 0)} archives")
        if self.missing:
            out.append(
                f"  archives not published: {len(self.missing)} ({', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''})"
            )
        if self.refused:
            out.append(f"  refused (checksum mismatch): {', '.join(self.refused)}")
        if self.malformed:
            out.append(f"  malformed rows skipped: {self.malformed}")
        out.extend("  " + n for n in self.notes)
        return out


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def ms_of_day(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


async def resolve_days(
    settings: Settings, start: date | None, end: date | None, days: int | None
) -> tuple[date, date, int]:
    """[start, end] of complete UTC days, and the exchange's now in ms (asked from the server)."""
    from microstructure.ingest.binance.rest import BinanceRest

    async with BinanceRest(settings.rest_url) as rest:
        server_ms = await rest.server_time()
    today = datetime.fromtimestamp(server_ms / 1000, tz=UTC).date()
    if days is not None:
        return today - timedelta(days=days), today - timedelta(days=1), server_ms
    assert start is not None
    last = min(end or today - timedelta(days=1), today - timedelta(days=1))
    return start, last, server_ms


async def load_archive_table(
    session: aiohttp.ClientSession,
    archive_url: str,
    kind: str,
    symbol: str,
    period: str,
    when: date | str,
    report: HistoricalReport,
    events: EventLog,
    collector: str,
) -> Any:
    """Download, verify and parse one archive (archives.ParsedCsv); None (recorded) when missing or refused."""
    from microstructure.ingest.binance import archives

    url = archives.archive_url(archive_url, kind, symbol, period, when)
    try:
        dl = await archives.download_archive(session, url)
    except archives.ArchiveMissing:
        report.missing.append(url.rsplit("/", 1)[-1])
        events.record(collector, symbol, "archive_missing", {"url": url})
        return None
    except archives.ChecksumMismatch as exc:
        report.refused.append(url.rsplit("/", 1)[-1])
        events.record(
            collector,
            symbol,
            "checksum_mismatch",
            {"url": url, "expected": exc.expected, "actual": exc.actual},
        )
        log.error("%s", exc)
        return None
    try:
        parsed = await asyncio.to_thread(archives.parse_archive_zip, kind, dl.path, where=url)
    finally:
        dl.discard()
    if parsed.malformed:
        report.malformed += parsed.malformed
        events.record(
            collector,
            symbol,
            "malformed",
            {"url": url, "rows": parsed.malformed, "sample": parsed.malformed_rows[:5]},
        )
    return parsed
