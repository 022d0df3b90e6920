"""`collect all`: every collector in one process, one writer pipeline, one health view.

Live: aggregate trades (trades_live.py), book snapshots (depth20 or local diff books)
and market data (mark price, funding, open interest, liquidations) run side by side over shared
websocket connections (one per up to 200 streams, rotated with overlap before Binance's 24 h limit),
one REST client, one ingest_events log, one health view and one writer. SIGINT/SIGTERM
(or `live_seconds`, or a caller's `stop_event`) stops every collector; each hands over what it
buffered, the writer flushes every pending batch and closes, and the run ends with exit code 0 (1
when a collector failed or stored nothing it was asked for, or batches stay spilled or were refused).

Historical: aggregate trades (archives + REST), bookDepth bands and the market-data loaders over the
same day range, one after the other, through the same writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from microstructure.config import Settings
from microstructure.features_sql.refresher import (
    BACKFILL_INTERVAL,
    DEFAULT_FEATURES_INTERVAL,
    refreshing_alongside,
    run_refresher,
)
from microstructure.ingest.binance.streams import SharedStreams
from microstructure.ingest.collectors.book import collect_book_historical, collect_book_live
from microstructure.ingest.collectors.health_http import HealthServer
from microstructure.ingest.collectors.market import collect_market_historical, collect_market_live
from microstructure.ingest.collectors.reconcile import (
    DEFAULT_RECONCILE_INTERVAL,
    DEFAULT_RECONCILE_WINDOW_DAYS,
    run_live_reconciler,
)
from microstructure.ingest.collectors.trades_live import collect_aggtrades_live
from microstructure.ingest.health import EventLog, Health
from microstructure.ingest.sink.spill_report import count_spill_files, spill_folder
from microstructure.ingest.sink.writer import open_writer, writer_problems
from microstructure.retention import DEFAULT_INTERVAL as DEFAULT_RETENTION_INTERVAL
from microstructure.retention import run_scheduled as run_retention_scheduled

log = logging.getLogger(__name__)


@dataclass
class AllReport:
    mode: str
    symbols: list[str]
    parts: dict[str, Any] = field(default_factory=dict)  # collector name -> its report
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    health: Health | None = None
    events: dict[str, int] = field(default_factory=dict)
    spill_files_left: int = 0  # every file in the spill folder at exit, rejected/ included
    spill_pending: int = 0  # of which batches waiting to be written (not rejected)
    batches_rejected: int = 0  # refused by the database during this run
    batches_dropped: int = 0  # spill folder full while the database was away (recorded in ingest_events)
    seconds: float = 0.0
    stopped_by: str = ""
    health_url: str = ""
    rest: dict[str, Any] = field(default_factory=dict)  # the shared REST client's counters
    rest_line: str = ""  # the shared REST client: requests, weight, budget waits by priority

    def problems(self) -> list[str]:
        """Why this run did not do its job: a collector failed or stored nothing it was asked for, or
        batches are not in the database at exit (spilled, or refused during this run)."""
        out = [f"{name} failed: {err}" for name, err in self.errors.items()]
        for name, part in self.parts.items():
            if hasattr(part, "problems"):
                out += [f"{name}: {p}" for p in part.problems()]
            elif not getattr(part, "ok", True):
                out.append(f"{name}: not ok (see its summary)")
        return out + writer_problems(self.spill_pending, self.batches_rejected, self.batches_dropped)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary_lines(self) -> list[str]:
        out = [f"collect all ({self.mode}) for {', '.join(self.symbols)}: {self.seconds:.1f} s"]
        if self.stopped_by:
            left = writer_problems(self.spill_pending, self.batches_rejected, self.batches_dropped)
            kept = "; ".join(left) if left else "every pending batch flushed"
            out.append(f"  stopped by {self.stopped_by}; {kept}")
        for name, part in self.parts.items():
            lines = part.summary_lines() if hasattr(part, "summary_lines") else [f"{name}: {part}"]
            out.extend("  " + line for line in lines)
        for name, err in self.errors.items():
            out.append(f"  {name} FAILED: {err}")
        if self.rest_line:
            out.append("  " + self.rest_line)
        out.extend("  note: " + n for n in self.notes)
        if self.health is not None:
            out.append("  health:")
            out.extend("  " + line for line in self.health.lines())
            unowned = self.health.malformed_total() - sum(
                getattr(p, "malformed", 0) for p in self.parts.values()
            )
            if unowned:  # the collectors' counts above plus these make the health total
                out.append(f"  malformed messages of no collector (stream name unreadable): {unowned}")
        if self.events:
            out.append("  ingest_events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())))
        out.append(f"  spill files left: {self.spill_files_left}")
        if self.batches_dropped:
            out.append(f"  batches dropped (spill folder full, database away): {self.batches_dropped}")
        return out


def spill_files(settings: Settings, *, rejected: bool = True) -> int:
    """Spilled batches in the spill folder (with those in rejected/ unless `rejected` is False). Only
    finished `.arrow` files are batches: a `.tmp` left by a write that failed holds none."""
    return count_spill_files(spill_folder(settings.home), rejected=rejected)


async def collect_all(
    settings: Settings,
    dsn: str,
    symbols: Sequence[str],
    *,
    mode: str = "live",
    live_seconds: float | None = None,
    book_source: str = "depth20",
    depth_levels: int = 20,
    oi_interval: float = 60.0,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
    writer: Any = None,
    stop_event: asyncio.Event | None = None,
    handle_signals: bool = True,
    stale_timeout: float = 10.0,
    include_aggtrades: bool = True,
    health: Health | None = None,
    health_port: int | None = None,
    liquidations_stream: str = "auto",
    features_interval: float | None = DEFAULT_FEATURES_INTERVAL,
    health_commit_after: float = 15.0,
    retention_keep_days: int | None = None,
    retention_interval: float = DEFAULT_RETENTION_INTERVAL,
    reconcile_interval: float | None = DEFAULT_RECONCILE_INTERVAL,
    reconcile_window_days: int = DEFAULT_RECONCILE_WINDOW_DAYS,
    rest: Any = None,
    handed_over: Callable[[str], bool] | None = None,
) -> AllReport:
    """Run every collector for `symbols` (see the module doc); the combined report.

    Features: live, the refresher materialises what the writer committed every `features_interval`
    seconds (None: not at all) and once more after the last flush; historical, beside the loads (a
    loaded day while the next one loads) and once more after them, before the report, so that old
    days are materialised too (a TimescaleDB refresh policy only covers its recent window).

    Retention (live, when `retention_keep_days` is given): raw days older than that go every
    `retention_interval` seconds once the Parquet export holds them (retention.run_scheduled).

    Reconciliation (live, unless `reconcile_interval` is None): every `reconcile_interval` seconds the
    stored trade days of the last `reconcile_window_days` are checked against their daily archive
    once it is published (reconcile.run_live_reconciler: a finished day heals by itself the next
    morning; a re-uploaded archive is noticed by its checksum), and the same days' bookDepth and
    metrics archives are loaded when published or replaced.

    `rest`: a REST client to use (live) instead of one of its own (the live set's runs share one, so
    their weight is counted and paced in one place); `handed_over`: see collect_aggtrades_live."""
    if mode not in ("live", "historical"):
        raise ValueError(f"mode: expected live or historical, got {mode!r}")
    symbols = [s.upper() for s in symbols]
    report = AllReport(mode, list(symbols))
    started = time.monotonic()
    own_writer = writer is None
    if own_writer:
        writer = await open_writer(settings, dsn)
    rejected_before = getattr(getattr(writer, "stats", None), "batches_rejected", 0)
    dropped_before = getattr(getattr(writer, "stats", None), "batches_dropped", 0)
    background_stop = asyncio.Event()
    refresher_task = retention_task = reconcile_task = None
    if mode == "live" and features_interval is not None:
        refresher_task = asyncio.create_task(
            run_refresher(dsn, background_stop, features_interval), name="features-refresher"
        )
    if mode == "live" and retention_keep_days is not None:
        retention_task = asyncio.create_task(
            run_retention_scheduled(dsn, retention_keep_days, background_stop, retention_interval),
            name="retention",
        )
    if mode == "live" and reconcile_interval is not None:
        reconcile_task = asyncio.create_task(
            run_live_reconciler(
                dsn, settings.archive_url, symbols, background_stop, reconcile_interval,
                window_days=reconcile_window_days,
            ),
            name="reconcile",
        )  # fmt: skip
    try:
        if mode == "live":
            await _live(
                settings,
                dsn,
                symbols,
                report,
                writer=writer,
                stop=stop_event or asyncio.Event(),
                live_seconds=live_seconds,
                book_source=book_source,
                depth_levels=depth_levels,
                oi_interval=oi_interval,
                handle_signals=handle_signals,
                stale_timeout=stale_timeout,
                include_aggtrades=include_aggtrades,
                health=health or Health(),
                health_port=health_port,
                liquidations_stream=liquidations_stream,
                health_commit_after=health_commit_after,
                rest=rest,
                handed_over=handed_over,
            )
        else:
            async with _features_alongside(dsn, features_interval, report):
                await _historical(
                    settings,
                    dsn,
                    symbols,
                    report,
                    writer=writer,
                    start=start,
                    end=end,
                    days=days,
                    include_aggtrades=include_aggtrades,
                )
                # the last refresh round sees every row (bounded, as the flush below: a database
                # gone away does not hold the run)
                await writer.flush(getattr(writer, "close_timeout", None), give_up_when_down=True)
    finally:
        if own_writer:
            await writer.close()
        else:  # the caller closes it; bounded, so that a stop while the database is away still stops
            await writer.flush(getattr(writer, "close_timeout", None), give_up_when_down=True)
        background_stop.set()  # the background rounds stop too
        for name, task in (
            ("reconcile", reconcile_task),
            ("features", refresher_task),
            ("retention", retention_task),
        ):
            if task is None:
                continue
            try:  # the refresher's last round covers what the final flush wrote
                report.parts[name] = await task
            except Exception as exc:
                report.errors[name] = f"{type(exc).__name__}: {exc}"
    report.spill_files_left = spill_files(settings)
    report.spill_pending = max(spill_files(settings, rejected=False), getattr(writer, "queue_depth", 0))
    stats = getattr(writer, "stats", None)
    report.batches_rejected = getattr(stats, "batches_rejected", 0) - rejected_before
    report.batches_dropped = getattr(stats, "batches_dropped", 0) - dropped_before
    report.seconds = time.monotonic() - started
    return report


async def _live(
    settings: Settings,
    dsn: str,
    symbols: list[str],
    report: AllReport,
    *,
    writer: Any,
    stop: asyncio.Event,
    live_seconds: float | None,
    book_source: str,
    depth_levels: int,
    oi_interval: float,
    handle_signals: bool,
    stale_timeout: float,
    include_aggtrades: bool,
    health: Health,
    health_port: int | None,
    liquidations_stream: str,
    health_commit_after: float = 15.0,
    rest: Any = None,
    handed_over: Callable[[str], bool] | None = None,
) -> None:
    from microstructure.ingest.binance.rest import BinanceRest

    events = EventLog(dsn)
    report.health = health
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):

            def on_signal(sig: int = sig) -> None:
                log.info("%s received: stopping every collector and flushing", signal.Signals(sig).name)
                report.stopped_by = signal.Signals(sig).name
                stop.set()

            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
    timer = None
    if live_seconds is not None:
        timer = loop.call_later(live_seconds, stop.set)
    # every collector's streams share the same connections (one per up to 1024 streams)
    streams = SharedStreams(
        settings.ws_url, expected=3 if include_aggtrades else 2, health=health, events=events,
        stale_timeout=stale_timeout,
    )  # fmt: skip
    async with BinanceRest(settings.rest_url) if rest is None else contextlib.nullcontext(rest) as rest:
        await rest.exchange_info()  # the weight budget from the exchange's announced limit
        shared = {"writer": writer, "stop_event": stop, "health": health, "events": events, "rest": rest}
        jobs: dict[str, Any] = {
            "book": collect_book_live(
                settings,
                dsn,
                symbols,
                source=book_source,
                depth_levels=depth_levels,
                shared_streams=streams,
                **shared,
            ),
            "market": collect_market_live(
                settings,
                dsn,
                symbols,
                oi_interval=oi_interval,
                shared_streams=streams,
                liquidations_stream=liquidations_stream,
                **shared,
            ),
        }
        if include_aggtrades:
            jobs["aggtrades"] = collect_aggtrades_live(
                settings, dsn, symbols, shared_streams=streams, handed_over=handed_over, **shared
            )
        names = list(jobs)
        tasks = {name: asyncio.create_task(job, name=f"collect-{name}") for name, job in jobs.items()}
        events_task = asyncio.create_task(events.run(stop))
        stream_task = asyncio.create_task(streams.run(stop), name="collect-streams")
        health_server = None
        if health_port is not None:
            health_server = HealthServer(
                health,
                writer,
                events,
                stale_after=max(60.0, 3 * stale_timeout),
                commit_after=health_commit_after,
            )
            port = await health_server.start(health_port)
            lag_task = asyncio.create_task(health_server.watch_lags(dsn, stop), name="health-lags")
            report.health_url = f"http://127.0.0.1:{port}/health"
            log.info("health endpoint: %s (and /metrics)", report.health_url)
        try:
            # a collector that fails stops the others (they flush what they hold)
            pending = set(tasks.values()) | {stream_task}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if any(t.exception() is not None for t in done if not t.cancelled()):
                    stop.set()
            if not stream_task.cancelled() and stream_task.exception() is not None:
                exc = stream_task.exception()
                report.errors["streams"] = f"{type(exc).__name__}: {exc}"
                log.error("the shared websocket connection failed", exc_info=exc)
            for name in names:
                t = tasks[name]
                if t.cancelled():
                    report.errors[name] = "cancelled"
                elif t.exception() is not None:
                    exc = t.exception()
                    report.errors[name] = f"{type(exc).__name__}: {exc}"
                    log.error("collector %s failed", name, exc_info=exc)
                else:
                    report.parts[name] = t.result()
        finally:
            stop.set()
            if timer is not None:
                timer.cancel()
            for t in tasks.values():
                if not t.done():
                    t.cancel()
            for t in tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for t in (stream_task, events_task):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await events.flush()
            if health_server is not None:
                lag_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lag_task
                await health_server.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            report.rest_line = rest.summary_line()
            report.rest = rest.stats.as_dict()
    report.events = dict(events.counts)


@contextlib.asynccontextmanager
async def _features_alongside(dsn: str, interval: float | None, report: AllReport) -> AsyncIterator[None]:
    """The historical loads with the feature refresher beside them (refreshing_alongside): a loaded
    day is materialised while the next one loads, every BACKFILL_INTERVAL seconds (or `interval`
    when it is longer than the live default), what is left once more at the end; None: no features."""
    if interval is None:
        yield
        return
    every = BACKFILL_INTERVAL if interval <= DEFAULT_FEATURES_INTERVAL else interval
    async with refreshing_alongside(dsn, every) as refreshed:
        yield
    report.parts["features"] = refreshed.report
    if refreshed.error is not None:
        report.errors["features"] = f"{type(refreshed.error).__name__}: {refreshed.error}"


async def _historical(
    settings: Settings,
    dsn: str,
    symbols: list[str],
    report: AllReport,
    *,
    writer: Any,
    start: date | None,
    end: date | None,
    days: int | None,
    include_aggtrades: bool,
) -> None:
    if include_aggtrades:
        from microstructure.ingest.collectors.trades_historical import collect_aggtrades_historical

        try:
            report.parts["aggtrades"] = await collect_aggtrades_historical(
                settings, dsn, symbols, start, end, days=days, progress=True, writer=writer
            )
        except Exception as exc:  # the other loaders still run
            report.errors["aggtrades"] = f"{type(exc).__name__}: {exc}"
            log.error("historical aggTrades failed", exc_info=exc)
    for name, fn, kw in (
        ("book_depth", collect_book_historical, {}),
        ("market", collect_market_historical, {"writer": writer}),
    ):
        try:
            report.parts[name] = await fn(settings, dsn, symbols, start, end, days=days, **kw)
        except Exception as exc:
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("historical %s failed", name, exc_info=exc)
