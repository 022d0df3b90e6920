"""Progress of a historical load over many days, whatever the terminal and the log level.

- on a terminal (`bar`): one rich progress bar per symbol (days done of all, rows, rows/s, what it
  is doing now) on stderr;
- at `-v`: one info line per day (or archive month) finished: which, how, days done of all, rows;
- always when no bar is shown (a pipe, a log file, `--no-progress`): a heartbeat line at least every
  `heartbeat_s` seconds (default 60), at the default log level (logger `microstructure.progress`):
  days done of all, rows, rows/s, elapsed, and what each symbol is doing, so that a long REST walk is
  never silent for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
heartbeat_log = logging.getLogger("microstructure.progress")  # shown at the default level (logging_setup)

HEARTBEAT_S = 60.0


@dataclass
class _Symbol:
    total: int
    done: int = 0
    rows: int = 0
    note: str = ""


class DayProgress:
    """Days of `what` per symbol: `add` each symbol's day count, `update` as days finish. Use it as
    a context manager from a coroutine: the heartbeat runs as a task of the running loop."""

    def __init__(self, what: str, *, bar: bool, heartbeat_s: float | None = None) -> None:
        self.what = what
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.symbols: dict[str, _Symbol] = {}
        self._t0 = time.monotonic()
        self._p: Any = None
        self._tasks: dict[str, Any] = {}
        self._beat: asyncio.Task[None] | None = None
        if bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("days"),
                TextColumn("{task.fields[rows]:>12,} rows"),
                TextColumn("{task.fields[rate]:>9,.0f} rows/s"),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    @property
    def enabled(self) -> bool:
        """A bar is shown (the heartbeat is off then: the bar is the progress)."""
        return self._p is not None

    def __enter__(self) -> DayProgress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DayProgress:
        self._t0 = time.monotonic()
        if self._p is not None:
            self._p.start()
        elif self.heartbeat_s > 0:
            with contextlib.suppress(RuntimeError):  # no running loop: no heartbeat
                self._beat = asyncio.get_running_loop().create_task(self._heartbeat(), name="progress")
        return self

    def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._p is not None:
            self._p.stop()

    def add(self, symbol: str, days: int) -> None:
        self.symbols[symbol] = _Symbol(days)
        if self._p is not None:
            self._tasks[symbol] = self._p.add_task(symbol, total=days, rows=0, rate=0.0, note="")

    def update(
        self,
        symbol: str,
        *,
        days: int = 0,
        rows: int | None = None,
        note: str | None = None,
        label: str | None = None,
    ) -> None:
        """`days` more finished (`label`: which and how, for the -v line), the symbol's `rows` so far,
        what it is doing now (`note`)."""
        s = self.symbols.get(symbol)
        if s is None:
            s = self.symbols[symbol] = _Symbol(0)
        s.done += days
        if rows is not None:
            s.rows = rows
        if note is not None:
            s.note = note
        if days and label is not None:
            log.info("%s: %s (%d/%d days, %s rows)", symbol, label, s.done, s.total, f"{s.rows:,}")
        if self._p is None or symbol not in self._tasks:
            return
        fields: dict[str, Any] = {}
        if rows is not None:
            fields.update(rows=rows, rate=rows / max(time.monotonic() - self._t0, 1e-3))
        if note is not None:
            fields["note"] = note
        self._p.update(self._tasks[symbol], advance=days, **fields)

    def heartbeat_line(self) -> str:
        elapsed = time.monotonic() - self._t0
        done = sum(s.done for s in self.symbols.values())
        total = sum(s.total for s in self.symbols.values())
        rows = sum(s.rows for s in self.symbols.values())
        now = "; ".join(f"{sym} {s.note}" for sym, s in self.symbols.items() if s.note and s.note != "done")
        return (
            f"{self.what}: {done}/{total} days, {rows:,} rows, {rows / max(elapsed, 1e-3):,.0f} rows/s, "
            f"{_elapsed(elapsed)} elapsed" + (f"; now {now}" if now else "")
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            heartbeat_log.info("%s", self.heartbeat_line())


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
