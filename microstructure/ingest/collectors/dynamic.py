"""A live run whose symbols change while it runs: `--all-symbols` (the universe, re-read), `--group`
(this member's share of it), or both.

- without `--group`: the live set is the universe (or the `--symbol` list);
- with `--group`: this member's universe row is the universe (re-written when it changes) and the
  live set is this member's share of it (group.run_group).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from microstructure.config import Settings
from microstructure.ingest.binance.rest import BinanceRest, IpBanned
from microstructure.ingest.collectors.follow import Collect, LiveSet
from microstructure.ingest.collectors.group import GroupMember, GroupReport, run_group
from microstructure.ingest.collectors.universe import UniverseFilter, follow_universe, read_universe


@dataclass
class GroupOptions:
    name: str
    lease_timeout: float
    redundancy: int


@dataclass
class UniverseOptions:
    filter: UniverseFilter
    interval: float


@dataclass
class DynamicReport:
    live: LiveSet
    group: GroupReport | None = None
    universe: str = ""
    universe_sizes: list[tuple[float, int]] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.errors + (self.group.problems() if self.group is not None else self.live.problems())

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary_lines(self) -> list[str]:
        out = []
        if self.universe:
            sizes = ", ".join(f"{n} at {t:.0f} s" for t, n in self.universe_sizes)
            out.append(f"universe: {self.universe}: {sizes}")
        if self.group is not None:
            out += self.group.summary_lines()
        else:
            out += self.live.summary_lines()
        out.extend(f"error: {e}" for e in self.errors)
        return out


async def _unset(symbols: list[str], stop: asyncio.Event) -> Any:
    raise RuntimeError("the live set's collection is not set")


async def initial_universe(
    settings: Settings, universe: UniverseOptions, weight_budget: int | None
) -> list[str]:
    """The universe at start (also what a historical run backfills)."""
    async with BinanceRest(settings.rest_url, weight_budget_per_min=weight_budget) as rest:
        return await read_universe(rest, universe.filter)


# Given the process's REST client and the live set's handed_over(symbol), the collection of a
# symbol set (follow.Collect).
MakeCollect = Callable[[BinanceRest, Callable[[str], bool]], Collect]


async def run_dynamic(
    settings: Settings,
    dsn: str,
    make_collect: MakeCollect,
    stop: asyncio.Event,
    *,
    symbols: list[str] | None,
    universe: UniverseOptions | None,
    group: GroupOptions | None,
    weight_budget: int | None = None,
    overlap_s: float | None = None,
) -> DynamicReport:
    """Until `stop`: the live set on the universe, or on this member's share of it. One REST client
    serves the universe reads and every run of the set (`make_collect(rest, handed_over)`), so their
    weight is counted and paced in one place whatever the number of runs; a run replaced by another
    fetches no tail for the symbols the other goes on with (`handed_over`)."""
    rest = BinanceRest(settings.rest_url, weight_budget_per_min=weight_budget)
    await rest.open()
    live = LiveSet(_unset) if overlap_s is None else LiveSet(_unset, overlap_s=overlap_s)
    live.collect = make_collect(rest, live.handed_over)
    report = DynamicReport(live, universe=universe.filter.describe() if universe else "")
    started = time.monotonic()
    tasks: list[asyncio.Task[Any]] = []
    try:
        current = await read_universe(rest, universe.filter) if universe is not None else list(symbols or [])
        report.universe_sizes.append((0.0, len(current)))
        member = (
            GroupMember(
                dsn, group.name, current, lease_timeout=group.lease_timeout, redundancy=group.redundancy
            )
            if group is not None
            else None
        )

        async def changed(new: list[str], added: list[str], removed: list[str]) -> None:
            report.universe_sizes.append((time.monotonic() - started, len(new)))
            why = "; ".join(
                p
                for p in (
                    f"listed: {', '.join(added)}" if added else "",
                    f"no longer TRADING (delisted, settling) or filtered out: {', '.join(removed)}"
                    if removed
                    else "",
                )
                if p
            )
            if member is not None:
                member.set_universe(new)  # every member's share follows at the next heartbeats
            else:
                await live.set_symbols(new, why)

        if universe is not None:
            tasks.append(
                asyncio.create_task(
                    follow_universe(rest, universe.filter, universe.interval, stop, current, changed)
                )
            )
        if member is not None:
            report.group = await run_group(member, live, stop)
        else:
            await live.set_symbols(current, "at start")
            stopper = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(live.failed.wait())
            await asyncio.wait({stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failed.cancel()
            stop.set()
            await live.close()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await rest.close()
        report.seconds = time.monotonic() - started
    if live.failure is not None and (not live.reports or isinstance(live.failure, IpBanned)):
        raise live.failure  # a ban (exit 3), or nothing ran (unreachable...): its exit code and one line
    return report
