"""A live symbol set that changes while the process runs (`--group`, `--all-symbols`).

`LiveSet` runs a live collector (`collect aggtrades`, `book-depth`, `market` or `all`: any
`collect(symbols, stop) -> report`) over a set of symbols that `set_symbols` changes without
stopping the process or the symbols that stay:

- the set is held as slices, each one run of the collector over some of the symbols with its own
  stop event. Symbols added form a new slice, which starts as any live run does: from the largest
  stored id of each symbol and its open gaps in agg_trade_gaps, so the hole since the symbol was
  last collected (by this process, another member of the group, or never) is fetched by REST
  `fromId` first;
- a slice holding a symbol that is dropped is replaced make-before-break: a slice of its remaining
  symbols starts first, and `overlap_s` later the old one stops with its usual stop (rows flushed,
  the tail filled or recorded as an open gap for the next owner). While both run, the same ids reach
  the writer twice and it keeps one copy. A dropped symbol is said so once (a log line and the
  summary), with the reason (another member took it, a delisting, an exclusion);
- a slice that ends by itself (a failure, a 418 ban) ends the whole set: `failed` is set.

The slices are independent runs (each its own writer and REST client), so a change costs one
collector start per change, not one per symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A collection of a symbol set until its event is set; returns its report (summary_lines, ok).
Collect = Callable[[list[str], asyncio.Event], Awaitable[Any]]

OVERLAP_S = 2.0  # a replacement slice runs this long beside the one it replaces


@dataclass
class Slice:
    symbols: list[str]
    stop: asyncio.Event
    task: asyncio.Task[Any]
    started: float = field(default_factory=time.monotonic)


@dataclass
class Change:
    at_s: float
    added: list[str]
    dropped: list[str]
    reason: str


class LiveSet:
    """The symbols a live collector follows now; `set_symbols` changes them (see the module doc)."""

    def __init__(self, collect: Collect, *, overlap_s: float = OVERLAP_S) -> None:
        self.collect = collect
        self.overlap_s = overlap_s
        self.slices: list[Slice] = []
        self.reports: list[Any] = []
        self.errors: list[str] = []
        self.changes: list[Change] = []
        self.failed = asyncio.Event()  # a slice ended without being asked to
        self.failure: BaseException | None = None  # what a failed slice raised
        self.closing = False
        self._stopping: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()

    @property
    def symbols(self) -> list[str]:
        return sorted({s for sl in self.slices for s in sl.symbols})

    def handed_over(self, symbol: str) -> bool:
        """True while another slice goes on with `symbol` (a retired slice then need not fetch its
        tail: the new one covers it from the stored ids); false once the whole set is closing."""
        return not self.closing and any(symbol in sl.symbols for sl in self.slices)

    def _start(self, symbols: list[str]) -> Slice:
        stop = asyncio.Event()
        task = asyncio.create_task(self.collect(list(symbols), stop), name=f"live-slice-{len(symbols)}")
        sl = Slice(list(symbols), stop, task)
        task.add_done_callback(lambda t, sl=sl: self._ended(sl, t))
        return sl

    def _ended(self, sl: Slice, task: asyncio.Task[Any]) -> None:
        if sl.stop.is_set() or task.cancelled():
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "it stopped by itself"
        log.error("a live collection ended before its stop", extra={"symbols": len(sl.symbols), "error": why})
        self.failed.set()

    async def _retire(self, sl: Slice, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        sl.stop.set()
        await self._collect_report(sl)

    async def _collect_report(self, sl: Slice) -> None:
        try:
            self.reports.append(await sl.task)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.errors.append(f"collection of {len(sl.symbols)} symbols failed: {type(exc).__name__}: {exc}")
            self.failure = exc

    async def set_symbols(self, symbols: Iterable[str], reason: str = "") -> tuple[list[str], list[str]]:
        """Follow `symbols` from now on; (added, dropped). Returns once the new slices have started
        (the replaced ones stop `overlap_s` later, in the background)."""
        want = sorted({s.upper() for s in symbols})
        have = set(self.symbols)
        added = [s for s in want if s not in have]
        dropped = sorted(have - set(want))
        if not added and not dropped:
            return [], []
        keep: list[Slice] = []
        retire: list[Slice] = []
        for sl in self.slices:
            if set(sl.symbols) & set(dropped):
                retire.append(sl)
                rest = [s for s in sl.symbols if s in want]
                if rest:
                    keep.append(self._start(rest))
            else:
                keep.append(sl)
        if added:
            keep.append(self._start(added))
        self.slices = keep
        for sl in retire:
            task = asyncio.create_task(self._retire(sl, self.overlap_s if len(keep) else 0.0))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self.changes.append(Change(time.monotonic() - self._started, added, dropped, reason))
        if added:
            log.info("symbols added to the live set", extra={"symbols": added, "reason": reason})
        for s in dropped:  # once per drop: the symbol is no longer in the set afterwards
            log.info(
                "symbol dropped from the live set: its stream stops here, where it stood is kept",
                extra={"symbol": s, "reason": reason},
            )
        return added, dropped

    async def close(self) -> None:
        """Stop every slice (each flushes and fills or records its tail) and wait for them all."""
        self.closing = True
        for sl in self.slices:
            sl.stop.set()
        for sl in self.slices:
            await self._collect_report(sl)
        self.slices = []
        while self._stopping:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._stopping))

    def problems(self) -> list[str]:
        out = list(self.errors)
        for run in self.reports:
            if hasattr(run, "problems"):
                out += run.problems()
            elif not getattr(run, "ok", True):
                out += list(getattr(run, "errors", [])) or ["a collection run was not ok (see its summary)"]
        return out

    def summary_lines(self) -> list[str]:
        out = [f"live set: {len(self.changes)} changes, {len(self.reports)} collection runs"]
        for c in self.changes:
            what = []
            if c.added:
                what.append(f"+{len(c.added)} ({_names(c.added)})")
            if c.dropped:
                what.append(f"-{len(c.dropped)} ({_names(c.dropped)})")
            out.append(f"  at {c.at_s:.1f} s: {', '.join(what)}" + (f": {c.reason}" if c.reason else ""))
        for i, run in enumerate(self.reports, 1):
            out.append(f"  run {i}:")
            out.extend("    " + line for line in run.summary_lines())
        out.extend(f"  error: {e}" for e in self.errors)
        return out


def _names(symbols: list[str], most: int = 8) -> str:
    return ", ".join(symbols[:most]) + (f" and {len(symbols) - most} more" if len(symbols) > most else "")
