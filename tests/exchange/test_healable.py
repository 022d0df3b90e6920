"""What only the archive can heal: ids withheld from the websocket and REST, live prices that differ
from the archive's, archives re-uploaded with a new checksum (knobs of the local exchange)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import io
import json
import time
import zipfile

import aiohttp
import numpy as np
from exchange_helpers import fetch, fetch_bytes, run
from websockets.asyncio.client import connect

from microstructure.exchange import ExchangeThread, healable
from microstructure.exchange.cli import add_parser, config_from_args

DAY = "2024-03-05"  # the last history day of FIXED_START's exchange (2 history days)


def archive_rows(ex, kind: str, symbol: str, day: str) -> tuple[str, list[list[str]]]:
    url = ex.archive_url(kind, symbol, day)
    status, data = fetch_bytes(url)
    assert status == 200, url
    status, checksum = fetch_bytes(url + ".CHECKSUM")
    digest = checksum.decode().split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    zf = zipfile.ZipFile(io.BytesIO(data))
    rows = list(csv.reader(zf.read(zf.namelist()[0]).decode().splitlines()))
    return digest, rows[1:] if rows and not rows[0][0].isdigit() else rows


def rest_day(ex, symbol: str, first: int, last: int) -> dict[int, list[object]]:
    out: dict[int, list[object]] = {}
    at = first
    while at <= last:
        status, _, page = fetch(ex, "/fapi/v1/aggTrades", symbol=symbol, fromId=at, limit=1000)
        assert status == 200
        if not page:
            break
        for r in page:
            if r["a"] <= last:
                out[r["a"]] = r
        at = page[-1]["a"] + 1
    return out


def test_withheld_and_differing_ids_rest_vs_archive(tmp_cfg) -> None:
    from exchange_helpers import FIXED_START

    cfg = tmp_cfg(clock_start=FIXED_START, symbols=("BTCUSDT",), trades_per_day=3_000)
    cfg.faults.withhold_agg_trades = 0.01
    cfg.faults.differ_agg_trades = 0.01
    with ExchangeThread(cfg) as ex:
        _, rows = archive_rows(ex, "aggTrades", "BTCUSDT", DAY)
        ids = np.array([int(r[0]) for r in rows])
        assert np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))  # the archive holds every id
        hidden = set(ids[healable.withheld(ids, cfg.seed, cfg.faults)].tolist())
        bumped = set(ids[healable.differing(ids, cfg.seed, cfg.faults)].tolist())
        assert 10 <= len(hidden) <= 80 and 10 <= len(bumped) <= 80
        rest = rest_day(ex, "BTCUSDT", int(ids[0]), int(ids[-1]))
        assert set(rest) == set(ids.tolist()) - hidden  # withheld from REST, nothing else missing
        tick = ex.markets["BTCUSDT"].spec.tick_size
        by_id = {int(r[0]): r for r in rows}
        for a, r in rest.items():
            want = float(by_id[a][1]) + (tick if a in bumped else 0.0)
            assert abs(float(r["p"]) - want) < tick / 10, a
            assert r["q"] == by_id[a][2] or float(r["q"]) == float(by_id[a][2])
        # startTime/endTime pages withhold the same ids
        t0 = int(by_id[int(ids[0])][5])
        _, _, page = fetch(
            ex, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=t0, endTime=t0 + 3_599_999, limit=1000
        )
        got = {r["a"] for r in page}
        assert got and not (got & hidden)
        assert set(range(min(got), max(got) + 1)) - got <= hidden


def test_withheld_ids_on_the_websocket(tmp_cfg) -> None:
    from exchange_helpers import FIXED_START

    cfg = tmp_cfg(clock_start=FIXED_START, symbols=("BTCUSDT",), live_rate=200.0)
    cfg.faults.withhold_agg_trades = 0.05
    cfg.faults.differ_agg_trades = 0.05
    with ExchangeThread(cfg) as ex:

        async def listen() -> list[dict[str, object]]:
            events = []
            async with connect(ex.ws_url + "/ws/btcusdt@aggTrade") as ws:
                end = time.monotonic() + 2.0
                while time.monotonic() < end:
                    with contextlib.suppress(TimeoutError):
                        events.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
            return events

        events = run(listen())
        ids = np.array([e["a"] for e in events])
        assert len(ids) > 100
        span = np.arange(ids.min(), ids.max() + 1)
        hidden = span[healable.withheld(span, cfg.seed, cfg.faults)]
        assert len(hidden) > 0
        assert set(ids.tolist()) == set(span.tolist()) - set(hidden.tolist())
        # the websocket's prices are the REST's (both one tick off the market where differing)
        rest = rest_day(ex, "BTCUSDT", int(ids.min()), int(ids.max()))
        assert {e["a"]: e["p"] for e in events} == {a: r["p"] for a, r in rest.items()}
        market = ex.markets["BTCUSDT"]
        tr = market.trades_from_id(int(ids.min()), len(span), ex.now_ms())
        spec = market.spec
        truth = dict(zip(tr.a.tolist(), tr.price.tolist(), strict=True))
        bumped = set(span[healable.differing(span, cfg.seed, cfg.faults)].tolist())
        assert bumped & set(ids.tolist())
        for e in events:
            want = (truth[e["a"]] + (spec.tick if e["a"] in bumped else 0)) / 10**spec.price_decimals
            assert abs(float(e["p"]) - want) < spec.tick_size / 10


def test_archive_reupload_changes_one_row_and_the_checksum(tmp_cfg) -> None:
    from exchange_helpers import FIXED_START

    cfg = tmp_cfg(clock_start=FIXED_START, symbols=("BTCUSDT",), trades_per_day=3_000)
    with ExchangeThread(cfg) as ex:
        before = {k: archive_rows(ex, k, "BTCUSDT", DAY) for k in ("aggTrades", "bookDepth", "metrics")}

        async def post() -> tuple[int, object]:
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    ex.base_url + "/admin/reupload",
                    params={"type": "aggTrades", "symbol": "BTCUSDT", "date": DAY},
                ) as r,
            ):
                return r.status, await r.json()

        status, body = run(post())
        assert status == 200 and body["revision"] == 1
        assert ex.reupload_archive("bookDepth", "BTCUSDT", DAY) == 1
        assert ex.reupload_archive("metrics", "BTCUSDT", DAY) == 1
        for kind, (digest, rows) in before.items():
            new_digest, new_rows = archive_rows(ex, kind, "BTCUSDT", DAY)
            assert new_digest != digest, kind
            changed = [i for i, (a, b) in enumerate(zip(rows, new_rows, strict=True)) if a != b]
            assert len(changed) == 1, kind
            i = changed[0]
            # aggTrades: the quantity; bookDepth: the depth; metrics: the open interest (and its value)
            cols = {"aggTrades": [2], "bookDepth": [2], "metrics": [2, 3]}[kind]
            assert [c for c in range(len(rows[i])) if rows[i][c] != new_rows[i][c]] == cols, kind

        # an unknown archive is refused
        async def bad() -> int:
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    ex.base_url + "/admin/reupload",
                    params={"type": "aggTrades", "symbol": "NOPEUSDT", "date": DAY},
                ) as r,
            ):
                return r.status

        assert run(bad()) == 400
    # the same as a knob: served re-uploaded from the start
    cfg2 = tmp_cfg(clock_start=FIXED_START, symbols=("BTCUSDT",), trades_per_day=3_000)
    cfg2.faults.reupload_archive_days = (DAY,)
    with ExchangeThread(cfg2) as ex:
        digest, rows = archive_rows(ex, "aggTrades", "BTCUSDT", DAY)
        assert digest != before["aggTrades"][0]
        assert sum(a != b for a, b in zip(before["aggTrades"][1], rows, strict=True)) == 1


def test_serve_flags() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["exchange", "serve", "--withhold-agg-trades", "0.02", "--differ-agg-trades", "0.01",
         "--reupload-archive-days", "2024-03-05"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.faults.withhold_agg_trades == 0.02
    assert cfg.faults.differ_agg_trades == 0.01
    assert cfg.faults.reupload_archive_days == ("2024-03-05",)
