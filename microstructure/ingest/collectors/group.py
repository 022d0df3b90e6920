"""Collector groups: collectors started with the same `--group NAME` split their symbols through the database.

No service besides the database: a lease table (`collector_group_members`, revision 0013) with one
row per member and a heartbeat. Every member
- moves its row's `heartbeat_at` to the database's `now()` every third of its lease timeout, with the
  symbols it collects at that moment (`owned`);
- reads the live members (heartbeat within the lease timeout, by the database's clock) and computes,
  the same way as every other member, who collects what: rendezvous hashing of each symbol over the
  live members whose universe (`--symbols`) lists it, the `redundancy` highest scores owning it
  (`assign`). A member joining takes exactly the symbols it now scores highest on and nothing else
  moves; a member dying (no heartbeat for the lease timeout: SIGKILL, its host or network gone) gives
  exactly its symbols to the next highest scorers;
- applies its share by restarting its collection with the new symbol set (`apply_ownership`, the one
  place to change when the collectors can follow a changing set without a restart). A live
  collector starts from the largest stored id of each symbol and the open gaps in agg_trade_gaps, so
  the hole a dead member left (or the instant of a handover) is fetched by REST `fromId`; the member
  that gives a symbol away stops it with its usual tail fill, and both collecting it for a moment is
  harmless (the writer is idempotent: one copy of each id).

A member that cannot reach the database for its lease timeout counts its lease as lost (its own
clock): it stops collecting until a heartbeat succeeds again, then rejoins and takes its share.
A clean stop removes the row, so the others take its symbols at their next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from microstructure.db.queries import load
from microstructure.waiting import sleep_or_stop

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIMEOUT = 15.0
FORGET_AFTER_S = 86_400.0  # rows of members dead for longer than this are removed


def _score(member: str, symbol: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\0{symbol}".encode(), digest_size=8).digest(), "big")


def assign(universes: Mapping[str, Sequence[str]], redundancy: int = 1) -> dict[str, list[str]]:
    """Member -> the symbols it collects, given every live member's universe (rendezvous hashing).

    Each symbol goes to the `redundancy` members with the highest hash of (member, symbol) among the
    members whose universe lists it (all of them when fewer are live). Deterministic: every member
    computes the same answer from the same live list."""
    by_symbol: dict[str, list[str]] = {}
    for member, symbols in universes.items():
        for s in symbols:
            by_symbol.setdefault(s, []).append(member)
    out: dict[str, list[str]] = {m: [] for m in universes}
    for s in sorted(by_symbol):
        ranked = sorted(by_symbol[s], key=lambda m: (_score(m, s), m), reverse=True)
        for m in ranked[: max(1, redundancy)]:
            out[m].append(s)
    return out


@dataclass
class GroupMember:
    """This process's membership of a group: its lease row, its heartbeat, its share."""

    dsn: str
    group: str
    universe: list[str]
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    redundancy: int = 1
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    member_id: str = ""
    state: str = "joining"  # joining | held | lost
    owned: list[str] = field(default_factory=list)  # what this member collects now (applied)
    target: list[str] = field(default_factory=list)  # its share by the last heartbeat
    live_members: int = 0
    last_ok: float = 0.0  # monotonic time of the last successful heartbeat
    heartbeats: int = 0
    failures: int = 0
    _conn: asyncpg.Connection | None = None

    def __post_init__(self) -> None:
        self.universe = sorted({s.upper() for s in self.universe})
        if not self.member_id:
            self.member_id = f"{self.host}-{self.pid}-{secrets.token_hex(3)}"

    @property
    def interval(self) -> float:
        return max(0.2, self.lease_timeout / 3)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=max(1.0, self.interval))
        return self._conn

    async def _join(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            load("group_join"), self.group, self.member_id, self.host, self.pid,
            float(self.lease_timeout), int(self.redundancy), self.universe,
        )  # fmt: skip

    async def beat(self) -> list[str]:
        """One heartbeat: renew the lease (joining when the row is not there), read the live members,
        compute this member's share (`target`, returned). A failed heartbeat keeps the last share
        until the lease timeout has passed since the last good one; then the share is empty (lost)."""
        timeout = max(1.0, self.interval)
        try:
            conn = await self._connection()
            async with conn.transaction():
                done = await conn.execute(
                    load("group_heartbeat"), self.group, self.member_id, self.owned, timeout=timeout
                )
                if done.endswith(" 0"):
                    await self._join(conn)
                rows = await conn.fetch(
                    load("group_live"), self.group, float(self.lease_timeout), timeout=timeout
                )
                if self.heartbeats % 100 == 0:
                    await conn.execute(load("group_forget"), self.group, FORGET_AFTER_S, timeout=timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.failures += 1
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            if self.state != "lost" and time.monotonic() - self.last_ok > self.lease_timeout:
                log.warning(
                    "group lease lost: no heartbeat for the lease timeout; collecting nothing until the "
                    "database answers",
                    extra={"group": self.group, "error": f"{type(exc).__name__}: {exc}"},
                )
                self.state = "lost"
                self.target = []
            return self.target
        self.heartbeats += 1
        self.last_ok = time.monotonic()
        universes = {r["member_id"]: list(r["universe"]) for r in rows}
        universes.setdefault(self.member_id, self.universe)  # our own row, even on a slow clock edge
        redundancy = max([self.redundancy, *(int(r["redundancy"]) for r in rows)])
        self.live_members = len(universes)
        self.target = assign(universes, redundancy)[self.member_id]
        self.state = "held"
        return self.target

    async def publish(self) -> None:
        """Write what this member collects now (after applying a change), best effort."""
        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = await self._connection()
            await conn.execute(
                load("group_heartbeat"), self.group, self.member_id, self.owned, timeout=self.interval
            )

    async def leave(self) -> None:
        """A clean stop: the row goes, the others take the symbols at their next heartbeat."""
        try:
            conn = await self._connection()
            await conn.execute(load("group_leave"), self.group, self.member_id, timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not leave the group (its lease expires by itself)", extra={"error": str(exc)})
        finally:
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None

    def health(self) -> dict[str, Any]:
        """For /health and /metrics."""
        return {
            "group": self.group,
            "member": self.member_id,
            "lease_state": self.state,
            "owned_symbols": len(self.owned),
            "owned": list(self.owned),
            "live_members": self.live_members,
            "seconds_since_heartbeat": round(time.monotonic() - self.last_ok, 1) if self.last_ok else None,
        }


# A collection of a symbol set until its event is set; returns its report (summary_lines, ok).
Collect = Callable[[list[str], asyncio.Event], Awaitable[Any]]


@dataclass
class Running:
    symbols: list[str]
    stop: asyncio.Event
    task: asyncio.Task[Any]


@dataclass
class GroupReport:
    group: str
    member: str
    runs: list[Any] = field(default_factory=list)  # the report of every collection run
    changes: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, symbols owned)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = list(self.errors)
        for run in self.runs:
            if hasattr(run, "problems"):
                out += run.problems()
            elif not getattr(run, "ok", True):
                out += list(getattr(run, "errors", [])) or ["a collection run was not ok (see its summary)"]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary_lines(self) -> list[str]:
        steps = ", ".join(f"{n} at {t:.1f} s" for t, n in self.changes) or "none"
        out = [
            f"group {self.group}, member {self.member}: {self.seconds:.1f} s, {len(self.runs)} collection "
            f"runs; symbols owned: {steps}"
        ]
        for i, run in enumerate(self.runs, 1):
            out.append(f"  run {i}:")
            out.extend("    " + line for line in run.summary_lines())
        out.extend(f"  error: {e}" for e in self.errors)
        return out


async def apply_ownership(
    current: Running | None, symbols: list[str], collect: Collect
) -> tuple[Running | None, Any]:
    """Make the collection follow `symbols`: today by stopping the running collection (it flushes
    and fills its tail) and starting one on the new set, which continues from the stored ids. The
    one step to replace by a follow-the-set call when the collectors offer one. Returns the new
    running collection and the report of the one stopped (None when none was)."""
    if current is not None and current.symbols == symbols:
        return current, None
    report = None
    if current is not None:
        current.stop.set()
        report = await current.task
    if not symbols:
        return None, report
    stop = asyncio.Event()
    task = asyncio.create_task(collect(list(symbols), stop), name="group-collection")
    return Running(list(symbols), stop, task), report


async def run_group(member: GroupMember, collect: Collect, stop: asyncio.Event) -> GroupReport:
    """Until `stop`: heartbeats every third of the lease timeout (a task of their own, so that a
    restart's flush never delays the lease) and the collection following this member's share."""
    report = GroupReport(member.group, member.member_id)
    started = time.monotonic()
    changed = asyncio.Event()

    async def heartbeats() -> None:
        while not stop.is_set():
            target = await member.beat()
            if target != member.owned:
                changed.set()
            await sleep_or_stop(stop, member.interval)

    beat_task = asyncio.create_task(heartbeats(), name="group-heartbeat")
    current: Running | None = None
    try:
        while not stop.is_set():
            waiter = asyncio.create_task(changed.wait())
            stopper = asyncio.create_task(stop.wait())
            watch = {waiter, stopper} | ({current.task} if current is not None else set())
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                break
            if current is not None and current.task.done():  # ended by itself: failed or stopped by a ban
                exc = current.task.exception()
                if exc is not None:
                    report.errors.append(f"collection failed: {type(exc).__name__}: {exc}")
                else:
                    report.runs.append(current.task.result())
                current = None
                member.owned = []
                stop.set()
                break
            changed.clear()
            target = list(member.target)
            log.info(
                "group share changed: restarting the collection",
                extra={"group": member.group, "symbols": len(target), "was": len(member.owned)},
            )
            current, stopped = await apply_ownership(current, target, collect)
            if stopped is not None:
                report.runs.append(stopped)
            member.owned = target
            report.changes.append((time.monotonic() - started, len(target)))
            await member.publish()
    finally:
        stop.set()
        if current is not None:
            current.stop.set()
            try:
                report.runs.append(await current.task)
            except Exception as exc:
                report.errors.append(f"collection failed: {type(exc).__name__}: {exc}")
        beat_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await beat_task
        member.owned = []
        await member.leave()
        report.seconds = time.monotonic() - started
    return report
