"""The lease table and the assignment against the real database: two members split the universe,
a member that stops heartbeating loses its symbols after the lease timeout, a joining member takes
its share and only that, redundancy 2 gives every symbol two owners, status shows the group."""

from __future__ import annotations

import asyncio

import psycopg

from microstructure.ingest.collectors.follow import LiveSet
from microstructure.ingest.collectors.group import GroupMember, assign, run_group
from microstructure.status import collect_status

UNIVERSE = [f"S{i:02d}USDT" for i in range(12)]


def test_assign_is_deterministic_balanced_and_moves_only_the_joiners_share() -> None:
    two = assign({"a": UNIVERSE, "b": UNIVERSE})
    assert sorted(two["a"] + two["b"]) == sorted(UNIVERSE)
    assert not set(two["a"]) & set(two["b"])
    assert two == assign({"b": UNIVERSE, "a": UNIVERSE})
    three = assign({"a": UNIVERSE, "b": UNIVERSE, "c": UNIVERSE})
    # the joiner takes symbols; nothing moves between the members already there
    assert set(three["a"]) <= set(two["a"]) and set(three["b"]) <= set(two["b"])
    assert three["c"] and sorted(three["a"] + three["b"] + three["c"]) == sorted(UNIVERSE)
    red = assign({"a": UNIVERSE, "b": UNIVERSE, "c": UNIVERSE}, redundancy=2)
    for s in UNIVERSE:
        assert sum(s in v for v in red.values()) == 2
    # a symbol only a member's universe lists goes to that member
    assert assign({"a": ["X"], "b": ["Y"]}) == {"a": ["X"], "b": ["Y"]}


def test_two_members_expiry_join_and_redundancy_in_the_database(db_url: str) -> None:
    async def go() -> None:
        a = GroupMember(db_url, "g1", UNIVERSE, lease_timeout=1.0, member_id="a")
        b = GroupMember(db_url, "g1", UNIVERSE, lease_timeout=1.0, member_id="b")
        other = GroupMember(db_url, "g2", UNIVERSE, lease_timeout=1.0, member_id="z")
        assert await a.beat() == UNIVERSE  # alone: everything
        ta, tb = await a.beat(), await b.beat()
        tb = await b.beat()
        ta = await a.beat()
        assert sorted(ta + tb) == UNIVERSE and not set(ta) & set(tb) and ta and tb
        assert await other.beat() == UNIVERSE  # another group is another split
        a.owned, b.owned = ta, tb
        await a.publish()
        await b.publish()
        report = collect_status(db_url)
        rows = {m["member_id"]: m for m in report.group_members}
        assert rows["a"]["owned_count"] == len(ta) and rows["a"]["alive"] and rows["b"]["alive"]
        assert {o["group_name"]: o["symbols"] for o in report.group_orphans} == {"g2": UNIVERSE}
        # b stops heartbeating: after the lease timeout a owns everything, status shows b dead
        await asyncio.sleep(1.3)
        assert await a.beat() == UNIVERSE
        report = collect_status(db_url)
        rows = {m["member_id"]: m for m in report.group_members}
        assert not rows["b"]["alive"] and rows["a"]["alive"]
        orphans = {o["group_name"]: o["symbols"] for o in report.group_orphans}
        assert orphans["g1"] == sorted(tb)  # a has not applied the new share yet
        # b comes back (its row is still there): it takes back exactly its share
        assert await b.beat() == tb
        assert sorted(await a.beat()) == sorted(ta)
        # redundancy 2 on one member makes the whole group keep two copies
        c = GroupMember(db_url, "g1", UNIVERSE, lease_timeout=1.0, member_id="c", redundancy=2)
        await c.beat()
        shares = [await m.beat() for m in (a, b, c)]
        for s in UNIVERSE:
            assert sum(s in t for t in shares) == 2, s
        await c.leave()  # a clean stop removes the row at once
        assert sorted(await a.beat() + await b.beat()) == UNIVERSE
        for m in (a, b, other):
            await m.leave()
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT count(*) FROM collector_group_members").fetchone() == (0,)

    asyncio.run(go())


def test_a_member_that_loses_the_database_gives_up_its_lease(db_url: str) -> None:
    async def go() -> None:
        m = GroupMember(db_url, "g", UNIVERSE, lease_timeout=0.6, member_id="m")
        assert await m.beat() == UNIVERSE and m.state == "held"
        m.dsn = "postgresql://nobody@127.0.0.1:1/none"  # the database unreachable from here on
        m._conn.terminate()
        assert await m.beat() == UNIVERSE  # within the lease timeout: keeps its share
        await asyncio.sleep(0.7)
        assert await m.beat() == [] and m.state == "lost"

    asyncio.run(go())


def test_run_group_follows_each_new_share_with_the_live_set(db_url: str) -> None:
    async def go() -> None:
        runs: list[list[str]] = []

        async def collect(symbols: list[str], stop: asyncio.Event) -> object:
            runs.append(symbols)
            await stop.wait()
            return type("R", (), {"ok": True, "summary_lines": lambda self: [",".join(symbols)]})()

        a = GroupMember(db_url, "g", UNIVERSE, lease_timeout=0.9, member_id="a")
        stop_a = asyncio.Event()
        task = asyncio.create_task(run_group(a, LiveSet(collect, overlap_s=0), stop_a))
        for _ in range(50):
            await asyncio.sleep(0.1)
            if runs:
                break
        assert runs == [UNIVERSE]
        b = GroupMember(db_url, "g", UNIVERSE, lease_timeout=0.9, member_id="b")
        tb = await b.beat()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if len(runs) == 2:
                break
        assert runs[1] == sorted(set(UNIVERSE) - set(tb))
        assert a.owned == runs[1]
        stop_a.set()
        report = await task
        assert report.ok and len(report.runs) == 2
        assert [n for _, n in report.changes] == [len(UNIVERSE), len(runs[1])]
        await b.leave()

    asyncio.run(go())


def test_a_new_universe_reaches_every_members_assignment(db_url: str) -> None:
    async def go() -> None:
        a = GroupMember(db_url, "u", UNIVERSE, lease_timeout=2.0, member_id="a")
        b = GroupMember(db_url, "u", UNIVERSE, lease_timeout=2.0, member_id="b")
        await a.beat()
        await b.beat()
        ta, tb = await a.beat(), await b.beat()
        assert sorted(ta + tb) == UNIVERSE
        grown = [*UNIVERSE, "NEWUSDT"]
        assert a.set_universe(grown) and not a.set_universe(grown)  # the same again: no change
        ta = await a.beat()
        assert "NEWUSDT" in ta  # only a lists it so far: a collects it
        assert b.set_universe(grown)
        shares = [await b.beat(), await a.beat()]
        assert sorted(shares[0] + shares[1]) == sorted(grown) and not set(shares[0]) & set(shares[1])
        shrunk = [s for s in grown if s != UNIVERSE[0]]  # a delisting
        a.set_universe(shrunk)
        b.set_universe(shrunk)
        await a.beat()
        shares = [await b.beat(), await a.beat()]
        assert sorted(shares[0] + shares[1]) == sorted(shrunk)
        await a.leave()
        await b.leave()

    asyncio.run(go())
