"""The days of a historical archive loader, and each day's archive loaded into one report.

- `resolve_days`: the complete UTC days of a run ([start, end] or the last N), on the exchange's clock;
- `load_archive_table`: download, verify and parse one data.binance.vision archive, a missing,
  refused (checksum) or failed one (no valid row, too many malformed rows) recorded in the report
  and in ingest_events and not loaded;
- `HistoricalReport`: rows and archives per symbol, missing, refused and failed archives, malformed
  rows per archive, format notes (microsecond times, ignored columns).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
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
    failed: dict[str, str] = field(default_factory=dict)  # archive -> why it was not loaded
    malformed: int = 0
    malformed_by_archive: dict[str, int] = field(default_factory=dict)  # file name (holds the day) -> rows
    format_notes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # note -> archives
    notes: list[str] = field(default_factory=list)
    rest_failed: dict[str, str] = field(default_factory=dict)  # "SYMBOL what day" -> why (after retries)
    rest_retries: int = 0  # REST requests retried (each an ingest_events rest_retry row)

    def problems(self) -> list[str]:
        out = [f"archives refused (checksum mismatch): {', '.join(self.refused)}"] if self.refused else []
        out += [f"archive {name} not loaded: {why}" for name, why in self.failed.items()]
        out += [f"{what} failed: {why}" for what, why in self.rest_failed.items()]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

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
        for name, why in self.failed.items():
            out.append(f"  FAILED {name}: {why}; nothing of it stored")
        for what, why in self.rest_failed.items():
            out.append(f"  FAILED {what}: {why} (a rerun loads it)")
        if self.rest_retries:
            out.append(f"  REST requests retried: {self.rest_retries} (ingest_events rest_retry)")
        if self.malformed:
            out.append(f"  malformed rows skipped: {self.malformed}")
            out.extend(f"    {name}: {n}" for name, n in self.malformed_by_archive.items())
        out.extend(f"  note: {note} ({n} archives)" for note, n in self.format_notes.items())
        out.extend("  " + n for n in self.notes)
        return out


# A download that got no HTTP answer at all (refused, reset, timed out), after its retries: the
# exchange is gone, the run stops (exit 1, "cannot reach") rather than trying every archive left,
# each with its own retries. A 5xx or a bad file fails that archive only.
CONNECT_FAILURES = (aiohttp.ClientConnectionError, ConnectionError, TimeoutError)


def day_range(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def ms_of_day(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


async def resolve_days(
    settings: Settings,
    start: date | None,
    end: date | None,
    days: int | None,
    symbols: Sequence[str] | None = None,
) -> tuple[date, date, int]:
    """[start, end] of complete UTC days, and the exchange's now in ms (asked from the server); with
    `symbols`, the start is not before the first of them was listed (exchangeInfo's onboardDate)."""
    from microstructure.ingest.binance.rest import BinanceRest
    from microstructure.ingest.collectors.trades_historical import first_listed_day

    async with BinanceRest(settings.rest_url, retry_malformed=True) as rest:
        server_ms = await rest.server_time()
        listed = first_listed_day(await rest.symbols(), symbols) if symbols else None
    today = datetime.fromtimestamp(server_ms / 1000, tz=UTC).date()
    if days is not None:
        first, last = today - timedelta(days=days), today - timedelta(days=1)
    else:
        assert start is not None
        first, last = start, min(end or today - timedelta(days=1), today - timedelta(days=1))
    return (max(first, listed) if listed else first), last, server_ms


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
    except archives.ArchiveError as exc:  # the download kept failing (network, 5xx): not loaded
        report.failed[url.rsplit("/", 1)[-1]] = str(exc)
        events.record(collector, symbol, "archive_failed", {"url": url, "reason": str(exc)})
        if isinstance(exc.__cause__, CONNECT_FAILURES):  # no answer at all: the exchange is gone,
            from microstructure.ingest.binance.rest import Unreachable  # the days left are not tried

            raise Unreachable(str(exc)) from exc
        log.error("%s", exc)
        return None
    name = url.rsplit("/", 1)[-1]
    try:
        parsed = await asyncio.to_thread(archives.parse_archive_zip, kind, dl.path, where=url)
    except archives.ArchiveError as exc:  # not a zip, or not one CSV in it
        report.failed[name] = str(exc)
        events.record(collector, symbol, "archive_failed", {"url": url, "reason": str(exc)})
        log.error("%s", exc)
        return None
    finally:
        dl.discard()
    for note in parsed.notes:
        report.format_notes[f"{kind}: {note}"] += 1
    if parsed.malformed:
        report.malformed += parsed.malformed
        report.malformed_by_archive[name] = parsed.malformed
        events.record(
            collector,
            symbol,
            "malformed",
            {"url": url, "rows": parsed.malformed, "sample": malformed_sample(parsed, 5)},
        )
    failure = parsed.failure()
    if failure is not None:
        # Not loaded at all: a file that is mostly not what its path says (a spot file at a USD-M
        # path, ...) would otherwise store a part of the day as if it were the day.
        report.failed[name] = failure
        events.record(
            collector,
            symbol,
            "archive_failed",
            {"url": url, "reason": failure, "rows": parsed.rows, "malformed": parsed.malformed},
        )
        log.error("%s: not loaded: %s", url, failure)
        return None
    return parsed


def malformed_sample(parsed: Any, n: int) -> list[dict[str, str]]:
    """The first `n` malformed rows of a parsed archive with their reasons (for ingest_events)."""
    return [
        {"row": row, "reason": why}
        for row, why in zip(parsed.malformed_rows[:n], parsed.malformed_reasons[:n], strict=True)
    ]
