"""`microstructure reconcile`: every stored aggregate-trade day compared with Binance's archive.

For each (symbol, UTC day) of [start, end] with stored trades (agg_trade_coverage):

- the day's .CHECKSUM is fetched; a day whose archive is not published yet (404) is reported as
  such (the live collector retries it later); a day already verified with that same sha256 is
  skipped (nothing can have changed on Binance's side: a second run changes nothing), unless
  `force`;
- otherwise the archive is downloaded, checked against its .CHECKSUM (a mismatch refuses the day,
  as the historical loader does) and parsed, and sink/reconcile.py diffs and repairs the day in SQL
  (missing ids inserted, differing rows replaced, rows the archive lacks moved to
  `archive_displaced`), marks it verified with the archive's sha256 and logs the changed range
  for the features;
- a re-uploaded archive (Binance replaces files: its .CHECKSUM changed since the day was verified)
  is reconciled again.

Every outcome is an `ingest_events` row (collector 'reconcile': reconciled, not_published,
checksum_mismatch, refused).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import aiohttp
import asyncpg

from microstructure.ingest.binance import archives
from microstructure.ingest.sink import reconcile as sink
from microstructure.ingest.sink.partitions import DayPartitions

log = logging.getLogger(__name__)

DATASET = "aggTrades"
DATASETS = ("aggTrades", "bookDepth", "metrics")
SHOWN_DIFFERENCES = 20  # differences printed per day (all of them, up to sink.MAX_LISTED, in the event)


class ReconcileError(RuntimeError):
    """Bad arguments (exit code 2)."""


@dataclass
class ReconcileReport:
    start: date
    end: date
    results: list[sink.DayResult] = field(default_factory=list)
    unchanged: list[tuple[str, date]] = field(default_factory=list)  # already verified, same checksum
    not_published: list[tuple[str, date]] = field(default_factory=list)
    refused: list[tuple[str, date, str]] = field(default_factory=list)  # checksum mismatch, unreadable
    reloaded: list[tuple[str, str, date, int, int]] = field(default_factory=list)  # bookDepth/metrics days

    @property
    def ok(self) -> bool:
        return not self.refused

    def problems(self) -> list[str]:
        return [f"{s} {d}: {why}" for s, d, why in self.refused]

    def totals(self) -> tuple[int, int, int]:
        return (
            sum(r.missing for r in self.results),
            sum(r.differing for r in self.results),
            sum(r.extra for r in self.results),
        )

    def summary_lines(self) -> list[str]:
        lines = []
        for r in self.results:
            lines.append(
                f"{r.symbol} {r.day}: verified against sha256 {r.sha256[:12]} ({r.archive_rows} archive rows): "
                f"{r.missing} missing inserted, {r.differing} differing replaced, {r.extra} not in the archive "
                "(moved to archive_displaced)"
                + (f", {r.unfillable} gaps absent from the archive too" if r.unfillable else "")
            )
            for d in r.differences[:SHOWN_DIFFERENCES]:
                lines.append(f"  differs {d.line()}")
            if r.differing > SHOWN_DIFFERENCES:
                lines.append(
                    f"  ... {r.differing - SHOWN_DIFFERENCES} more (ingest_events, archive_displaced)"
                )
            if r.extra_ids:
                shown = ", ".join(str(i) for i in r.extra_ids[:SHOWN_DIFFERENCES])
                more = f" and {r.extra - SHOWN_DIFFERENCES} more" if r.extra > SHOWN_DIFFERENCES else ""
                lines.append(f"  not in the archive: ids {shown}{more}")
        for dataset, s, d, deleted, inserted in self.reloaded:
            lines.append(
                f"{s} {d}: {dataset} loaded again from its archive ({inserted} rows, {deleted} replaced)"
            )
        for s, d in self.unchanged:
            lines.append(f"{s} {d}: already verified against the published checksum, unchanged")
        for s, d in self.not_published:
            lines.append(f"{s} {d}: archive not published yet")
        for s, d, why in self.refused:
            lines.append(f"{s} {d}: refused: {why}")
        m, x, e = self.totals()
        lines.append(
            f"reconcile {self.start}..{self.end}: {len(self.results)} days reconciled ({m} missing, {x} differing, "
            f"{e} extra), {len(self.unchanged)} unchanged, {len(self.not_published)} not published, "
            f"{len(self.refused)} refused"
            + (f"; {len(self.reloaded)} bookDepth/metrics days loaded again" if self.reloaded else "")
        )
        return lines


async def stored_days(
    conn: asyncpg.Connection, symbols: Sequence[str] | None, start: date, end: date
) -> list[tuple[str, date, str | None]]:
    """(symbol, day, verified sha256 or None) of every stored aggregate-trade day in [start, end]
    (`symbols` None: every symbol)."""
    rows = await conn.fetch(
        sink.sql("reconcile_stored_days"), list(symbols) if symbols is not None else None, start, end
    )
    return [(r["symbol"], r["day"], r["verified_sha256"]) for r in rows]


async def reconcile_day(
    conn: asyncpg.Connection,
    session: aiohttp.ClientSession,
    archive_url: str,
    symbol: str,
    day: date,
    verified: str | None,
    report: ReconcileReport,
    *,
    force: bool = False,
    partitions: DayPartitions | None = None,
) -> sink.DayResult | None:
    """Reconcile one stored day (see the module doc); its result, or None when nothing was done
    (unchanged, not published, refused: recorded in `report`)."""
    url = archives.archive_url(archive_url, DATASET, symbol, "daily", day)
    try:
        published = await archives.fetch_checksum(session, url)
    except archives.ArchiveMissing:
        report.not_published.append((symbol, day))
        return None
    if published == verified and not force:
        report.unchanged.append((symbol, day))
        return None
    try:
        parsed = await archives.load_aggtrades_archive(session, archive_url, symbol, "daily", day)
    except archives.ArchiveMissing:
        report.not_published.append((symbol, day))
        return None
    except archives.ChecksumMismatch as exc:
        report.refused.append((symbol, day, str(exc)))
        await sink.record_event(conn, symbol, "checksum_mismatch", {"day": day.isoformat(), "url": url})
        return None
    failure = parsed.failure()
    if failure is not None:
        report.refused.append((symbol, day, f"{url}: {failure}"))
        await sink.record_event(conn, symbol, "refused", {"day": day.isoformat(), "url": url, "why": failure})
        return None
    if verified is not None and verified != parsed.sha256:
        log.info("%s %s: archive re-uploaded (sha256 %s, was %s): reconciling again", symbol, day,
                 parsed.sha256[:12], verified[:12])  # fmt: skip
    result = await sink.reconcile_agg_day(
        conn, symbol, day, parsed.table, parsed.sha256, partitions=partitions
    )
    report.results.append(result)
    log.info(
        "%s %s reconciled: %d missing, %d differing, %d extra",
        symbol, day, result.missing, result.differing, result.extra,
    )  # fmt: skip
    return result


async def reconcile(
    dsn: str,
    archive_url: str,
    symbols: Sequence[str] | None,
    start: date,
    end: date,
    *,
    force: bool = False,
    datasets: Sequence[str] = DATASETS,
) -> ReconcileReport:
    """Reconcile every stored aggregate-trade day of `symbols` (None: every symbol with stored trades)
    in [start, end] with its daily archive; for bookDepth and metrics (in `datasets`), every day
    with stored rows is loaded again from its archive when the archive's checksum is not the one
    last loaded (a re-upload, or rows that did not come from it)."""
    if end < start:
        raise ReconcileError(f"--end {end} is before --start {start}")
    report = ReconcileReport(start, end)
    partitions = DayPartitions()
    conn = await asyncpg.connect(dsn)
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        ) as session:
            if DATASET in datasets:
                for symbol, day, verified in await stored_days(conn, symbols, start, end):
                    await reconcile_day(
                        conn, session, archive_url, symbol, day, verified, report,
                        force=force, partitions=partitions,
                    )  # fmt: skip
            for dataset in (d for d in datasets if d != DATASET):
                rows = await conn.fetch(
                    sink.sql("archive_stored_days"), list(symbols) if symbols is not None else None,
                    start, end, dataset,
                )  # fmt: skip
                per_symbol: dict[str, list[date]] = {}
                for r in rows:
                    per_symbol.setdefault(r["symbol"], []).append(r["day"])
                for symbol, days in per_symbol.items():
                    await reload_archive_days(
                        conn, session, archive_url, dataset, symbol, days, report, force=force
                    )
    finally:
        await conn.close()
    return report


# ---------------------------------------------------------------- live: finished days, by themselves

DEFAULT_RECONCILE_INTERVAL = 600.0  # seconds between rounds; Binance publishes a day the next morning
DEFAULT_RECONCILE_WINDOW_DAYS = 3  # days back from the newest stored day a live run checks each round


@dataclass
class LiveReconcileReport:
    """What the live reconciler did over a run."""

    rounds: int = 0
    reconciled: list[sink.DayResult] = field(default_factory=list)
    reloaded: list[tuple[str, str, date, int, int]] = field(
        default_factory=list
    )  # dataset, symbol, day, deleted, inserted
    refused: list[tuple[str, date, str]] = field(default_factory=list)
    errors: int = 0  # rounds that failed (network, database): retried on the next round

    def problems(self) -> list[str]:
        return [f"{s} {d}: archive refused: {why}" for s, d, why in self.refused]

    def summary_lines(self) -> list[str]:
        m = sum(r.missing for r in self.reconciled)
        x = sum(r.differing for r in self.reconciled)
        e = sum(r.extra for r in self.reconciled)
        lines = [
            f"reconcile: {self.rounds} rounds, {len(self.reconciled)} trade days verified against their archive "
            f"({m} missing inserted, {x} differing replaced, {e} not in the archive), "
            f"{len(self.reloaded)} bookDepth/metrics days loaded from their archive"
            + (f", {len(self.refused)} refused" if self.refused else "")
            + (f", {self.errors} rounds failed (retried)" if self.errors else "")
        ]
        for r in self.reconciled:
            lines.append(
                f"  {r.symbol} {r.day}: {r.missing} missing, {r.differing} differing, {r.extra} extra"
            )
        return lines


def _archive_rows(dataset: str, symbol: str, parsed: Any) -> tuple[Any, dict[str, str]]:
    """The archive-only table's rows of a parsed bookDepth / metrics archive (as the historical
    loaders build them), with the column types writer.merge_table sends."""
    import pyarrow as pa

    from microstructure.ingest.records import BOOK_DEPTH_BANDS, FUTURES_METRICS

    t = parsed.table
    sym = pa.array([symbol] * t.num_rows, pa.string())
    if dataset == "bookDepth":
        cols = {
            "symbol": sym,
            "ts": t.column("timestamp"),
            **{c: t.column(c) for c in ("percentage", "depth", "notional")},
        }
        return pa.table(cols), BOOK_DEPTH_BANDS
    cols = {
        "symbol": sym,
        "ts": t.column("create_time"),
        **{c: t.column(c) for c in list(FUTURES_METRICS)[2:]},
    }
    return pa.table(cols), FUTURES_METRICS


async def reload_archive_days(
    conn: asyncpg.Connection,
    session: aiohttp.ClientSession,
    archive_url: str,
    dataset: str,
    symbol: str,
    days: Sequence[date],
    report: LiveReconcileReport | ReconcileReport,
    *,
    force: bool = False,
) -> None:
    """Load each published bookDepth / metrics archive of `days` whose checksum is not the one last
    loaded (first publication or a re-upload; `force`: whatever its checksum), replacing the day's
    stored rows."""
    if not days:
        return
    verified = await sink.verified_days(conn, dataset, symbol, min(days), max(days))
    for day in days:
        url = archives.archive_url(archive_url, dataset, symbol, "daily", day)
        try:
            published = await archives.fetch_checksum(session, url)
        except archives.ArchiveMissing:
            continue
        if published == verified.get(day) and not force:
            if isinstance(report, ReconcileReport):
                report.unchanged.append((f"{symbol} {dataset}", day))
            continue
        try:
            dl = await archives.download_archive(session, url)
        except archives.ArchiveMissing:
            continue
        except archives.ChecksumMismatch as exc:
            report.refused.append((symbol, day, str(exc)))
            await sink.record_event(conn, symbol, "checksum_mismatch", {"day": day.isoformat(), "url": url})
            continue
        try:
            parsed = await asyncio.to_thread(archives.parse_archive_zip, dataset, dl.path, where=url)
        finally:
            dl.discard()
        failure = parsed.failure()
        if failure is not None:
            report.refused.append((symbol, day, f"{url}: {failure}"))
            continue
        rows, types = _archive_rows(dataset, symbol, parsed)
        deleted, inserted = await sink.reload_archive_day(conn, dataset, symbol, day, rows, types, dl.sha256)
        report.reloaded.append((dataset, symbol, day, deleted, inserted))
        log.info(
            "%s %s %s loaded from its archive (%d rows, %d replaced)", dataset, symbol, day, inserted, deleted
        )


async def reconcile_round(
    conn: asyncpg.Connection,
    session: aiohttp.ClientSession,
    archive_url: str,
    symbols: Sequence[str],
    window_days: int,
    report: LiveReconcileReport,
    *,
    datasets: Sequence[str] = ("bookDepth", "metrics"),
    partitions: DayPartitions | None = None,
) -> None:
    """One live round: for each symbol, the stored trade days of the last `window_days` (up to the
    newest stored day, whose archive 404s until it is published) are reconciled when their archive
    is published and its checksum is not the verified one; the same days of bookDepth and metrics
    are loaded from their archives when published or replaced."""
    per_day = ReconcileReport(date.min, date.max)
    rows = await conn.fetch(sink.sql("reconcile_window"), list(symbols), window_days)
    by_symbol: dict[str, list[tuple[date, str | None]]] = {}
    for r in rows:
        by_symbol.setdefault(r["symbol"], []).append((r["day"], r["verified_sha256"]))
    for symbol, days in by_symbol.items():
        for day, verified in days:
            result = await reconcile_day(
                conn, session, archive_url, symbol, day, verified, per_day, partitions=partitions
            )
            if result is not None:
                report.reconciled.append(result)
        for dataset in datasets:
            await reload_archive_days(
                conn, session, archive_url, dataset, symbol, [d for d, _ in days], report
            )
    report.refused.extend(per_day.refused)


async def run_live_reconciler(
    dsn: str,
    archive_url: str,
    symbols: Sequence[str],
    stop: asyncio.Event,
    interval: float = DEFAULT_RECONCILE_INTERVAL,
    *,
    window_days: int = DEFAULT_RECONCILE_WINDOW_DAYS,
    datasets: Sequence[str] = ("bookDepth", "metrics"),
) -> LiveReconcileReport:
    """Every `interval` seconds until `stop`: reconcile_round. A failed round (archive server or
    database away) is retried on the next one."""
    from microstructure.waiting import sleep_or_stop

    report = LiveReconcileReport()
    partitions = DayPartitions()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    ) as session:
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                try:
                    await reconcile_round(
                        conn, session, archive_url, symbols, window_days, report,
                        datasets=datasets, partitions=partitions,
                    )  # fmt: skip
                finally:
                    await conn.close()
                report.rounds += 1
            except (archives.ArchiveError, aiohttp.ClientError, TimeoutError, OSError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:  # fmt: skip
                report.errors += 1
                log.warning("archive reconciliation round failed, retrying in %.0f s: %s: %s", interval,
                            type(exc).__name__, exc)  # fmt: skip
            if await sleep_or_stop(stop, interval):
                break
    return report
