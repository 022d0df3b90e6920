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
- follows its share with a live set (follow.LiveSet.set_symbols, no restart of the others): a symbol
  taken starts from the largest stored id and the open gaps in agg_trade_gaps, so the hole a dead
  member left (or the instant of a handover) is fetched by REST `fromId`; the member that gives a
  symbol away stops it with its usual tail fill, and both collecting it for a moment is harmless
  (the writer is idempotent: one copy of each id).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from microstructure.db.queries import load
from microstructure.ingest.collectors.follow import LiveSet
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
    _universe_changed: bool = False

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

    def set_universe(self, symbols: Sequence[str]) -> bool:
        """A new universe (`--all-symbols` read a listing or a delisting): written to this member's row
        at the next heartbeat, from when every member's assignment follows it. True when it changed."""
        new = sorted({s.upper() for s in symbols})
        if new == self.universe:
            return False
        self.universe = new
        self._universe_changed = True
        return True

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
                if done.endswith(" 0") or self._universe_changed:
                    await self._join(conn)
                    self._universe_changed = False
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


@dataclass
class GroupReport:
    group: str
    member: str
    live: LiveSet
    changes: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, symbols owned)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def runs(self) -> list[Any]:
        """The report of every collection run (slice) of the live set."""
        return self.live.reports

    def problems(self) -> list[str]:
        return list(self.errors) + self.live.problems()

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary_lines(self) -> list[str]:
        steps = ", ".join(f"{n} at {t:.1f} s" for t, n in self.changes) or "none"
        out = [f"group {self.group}, member {self.member}: {self.seconds:.1f} s; symbols owned: {steps}"]
        out.extend("  " + line for line in self.live.summary_lines())
        out.extend(f"  error: {e}" for e in self.errors)
        return out


async def run_group(member: GroupMember, live: LiveSet, stop: asyncio.Event) -> GroupReport:
    """Until `stop`: heartbeats every third of the lease timeout (a task of their own, so that a
    change of the set never delays the lease) and the live set following this member's share
    (`LiveSet.set_symbols`: symbols taken start from their stored ids and gaps, symbols given away
    stop recording where they stood). A member whose lease is lost collects nothing until it holds
    one again."""
    report = GroupReport(member.group, member.member_id, live)
    started = time.monotonic()
    changed = asyncio.Event()

    async def heartbeats() -> None:
        while not stop.is_set():
            target = await member.beat()
            if target != member.owned:
                changed.set()
            await sleep_or_stop(stop, member.interval)

    beat_task = asyncio.create_task(heartbeats(), name="group-heartbeat")
    try:
        while not stop.is_set():
            waiter = asyncio.create_task(changed.wait())
            stopper = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(live.failed.wait())
            await asyncio.wait({waiter, stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
            for t in (waiter, stopper, failed):
                t.cancel()
            if stop.is_set():
                break
            if live.failed.is_set():  # a collection ended by itself: failed, or stopped by a ban
                stop.set()
                break
            changed.clear()
            target = list(member.target)
            why = "the group's share changed" if member.state == "held" else "the group lease is lost"
            log.info(
                "group share changed",
                extra={"group": member.group, "symbols": len(target), "was": len(member.owned)},
            )
            await live.set_symbols(target, f"{why} ({member.live_members} live members)")
            member.owned = target
            report.changes.append((time.monotonic() - started, len(target)))
            await member.publish()
    finally:
        stop.set()
        await live.close()
        beat_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await beat_task
        member.owned = []
        await member.leave()
        report.seconds = time.monotonic() - started
    return report
