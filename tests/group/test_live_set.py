"""follow.LiveSet on a recording collector: symbols added start a run of their own and touch no
running one; a dropped symbol's run is replaced make-before-break (the replacement starts before the
old run stops) and says so once; handed_over tells a stopping run which symbols go on elsewhere; a run
that ends by itself sets `failed`."""

from __future__ import annotations

import asyncio
import logging

import pytest

from microstructure.ingest.collectors.follow import LiveSet


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, ...]]] = []
        self.handed: dict[tuple[str, ...], dict[str, bool]] = {}
        self.live: LiveSet | None = None
        self.fail: set[str] = set()

    async def collect(self, symbols: list[str], stop: asyncio.Event) -> object:
        key = tuple(symbols)
        self.events.append(("start", key))
        if self.fail & set(symbols):
            raise RuntimeError("boom")
        await stop.wait()
        assert self.live is not None
        self.handed[key] = {s: self.live.handed_over(s) for s in symbols}
        self.events.append(("stop", key))
        return type("R", (), {"ok": True, "summary_lines": lambda self: [",".join(symbols)]})()


def test_add_drop_make_before_break_and_handed_over(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        rec = Recorder()
        live = LiveSet(rec.collect, overlap_s=0.2)
        rec.live = live
        await live.set_symbols(["A", "B"], "at start")
        await asyncio.sleep(0.05)
        await live.set_symbols(["A", "B", "C"], "listed: C")
        await asyncio.sleep(0.05)
        assert rec.events == [("start", ("A", "B")), ("start", ("C",))]  # A, B untouched
        with caplog.at_level(logging.INFO, logger="microstructure.ingest.collectors.follow"):
            added, dropped = await live.set_symbols(["A", "C"], "delisted: B")
            assert (added, dropped) == ([], ["B"])
            await asyncio.sleep(0.05)
            # the replacement of (A, B) is running before (A, B) stops
            assert rec.events[-1] == ("start", ("A",))
            await asyncio.sleep(0.4)
            assert rec.events[-1] == ("stop", ("A", "B"))
            assert await live.set_symbols(["A", "C"]) == ([], [])  # no change, nothing said
        said = [r for r in caplog.records if "dropped from the live set" in r.getMessage()]
        assert len(said) == 1 and said[0].symbol == "B"  # type: ignore[attr-defined]
        assert rec.handed[("A", "B")] == {"A": True, "B": False}  # A goes on in its replacement
        assert live.symbols == ["A", "C"]
        await live.close()
        assert rec.handed[("A",)] == {"A": False} and rec.handed[("C",)] == {"C": False}  # the end: tails
        assert len(live.reports) == 3 and not live.problems() and not live.failed.is_set()
        lines = live.summary_lines()
        assert lines[0] == "live set: 3 changes, 3 collection runs" and "-1 (B): delisted: B" in lines[3]

    asyncio.run(go())


def test_a_run_that_fails_sets_failed() -> None:
    async def go() -> None:
        rec = Recorder()
        rec.fail = {"X"}
        live = LiveSet(rec.collect)
        rec.live = live
        await live.set_symbols(["X"])
        await asyncio.wait_for(live.failed.wait(), 5)
        await live.close()
        assert live.problems() == ["collection of 1 symbols failed: RuntimeError: boom"]
        assert isinstance(live.failure, RuntimeError)

    asyncio.run(go())
