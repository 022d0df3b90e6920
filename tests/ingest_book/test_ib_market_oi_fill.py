"""Today's open interest: the metrics archives end yesterday 23:55, openInterestHist (5m, last 30
days) has the hours since. A historical run whose range ends yesterday fills them up to now (a rerun
changes nothing), and a live run fills the time since the last stored open interest, so every bar
since midnight carries a value of today (checked against the exchange's REST answer, read here by an
independent client, and the features against a pandas reading of the raw rows)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import numpy as np
import pandas as pd
from ib_helpers import collect_cmd, day_ms, exchange_config, fetch_all, make_writer, ms, settings_for

from microstructure.cli import main
from microstructure.exchange import ExchangeThread, LocalExchange
from microstructure.ingest.collectors.market import collect_market_historical, collect_market_live

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
STEP = 300_000  # openInterestHist period 5m
MINUTE = 60_000
TODAY = "2024-03-06"


async def rest_oi_hist(base_url: str, symbol: str, start_ms: int) -> dict[int, float]:
    """The exchange's openInterestHist from `start_ms` on (5m), by a plain HTTP client: {ts: value}."""
    out: dict[int, float] = {}
    async with aiohttp.ClientSession() as http:
        while True:
            params = {"symbol": symbol, "period": "5m", "startTime": start_ms, "limit": 500}
            async with http.get(f"{base_url}/futures/data/openInterestHist", params=params) as r:
                assert r.status == 200
                page = await r.json()
            out.update({int(x["timestamp"]): float(x["sumOpenInterest"]) for x in page})
            if len(page) < 500:
                return out
            start_ms = int(page[-1]["timestamp"]) + 1


def stored_oi(db_url: str) -> pd.DataFrame:
    rows = asyncio.run(fetch_all(db_url, "SELECT * FROM open_interest ORDER BY symbol, ts"))
    df = pd.DataFrame([dict(r) for r in rows])
    df["t"] = [ms(t) for t in df["ts"]]
    return df


def features_1m(db_url: str, since_ms: int) -> pd.DataFrame:
    rows = asyncio.run(
        fetch_all(
            db_url,
            "SELECT symbol, bucket, open_interest, oi_change_pct FROM features_1m "
            "WHERE bucket >= to_timestamp($1 / 1000.0) ORDER BY symbol, bucket",
            since_ms,
        )
    )
    df = pd.DataFrame([dict(r) for r in rows])
    df["t"] = [ms(t) for t in df["bucket"]]
    return df


def check_features_follow(db_url: str, oi: pd.DataFrame, since_ms: int) -> pd.DataFrame:
    """features_1m since `since_ms` against the documented rule, computed here from the raw rows:
    open_interest = the last observation before the bar's end, oi_change_pct = its change from the
    last observation before the bar's start, in %."""
    feats = features_1m(db_url, since_ms)
    assert len(feats) > 0
    for sym in SYMBOLS:
        raw = oi[oi["symbol"] == sym].sort_values("t")
        t, v = raw["t"].to_numpy(), raw["open_interest"].to_numpy(float)
        f = feats[feats["symbol"] == sym]
        bar = f["t"].to_numpy()
        now = v[np.searchsorted(t, bar + MINUTE, side="left") - 1]
        prev = v[np.searchsorted(t, bar, side="left") - 1]
        assert np.array_equal(f["open_interest"].to_numpy(float), now), sym
        assert np.allclose(f["oi_change_pct"].to_numpy(float), (now - prev) / prev * 100, rtol=1e-12, atol=0)
    return feats


def test_historical_run_fills_today_from_open_interest_hist_and_a_rerun_changes_nothing(
    db_url, ib_cache, tmp_path
) -> None:
    cfg = exchange_config(
        ib_cache,
        history_days=3,
        live_rate=None,
        trades_per_day=2_000,
        clock_start=datetime(2024, 3, 6, 5, 0, 5, tzinfo=UTC),
    )
    midnight = day_ms(TODAY)
    with ExchangeThread(cfg) as ex:
        argv = collect_cmd(db_url, tmp_path, "market", "--symbol", ",".join(SYMBOLS), "--mode", "historical",
                           "--days", "2", "--exchange-url", ex.base_url)[3:]  # fmt: skip
        assert main(argv) == 0
        first = stored_oi(db_url)
        feats = features_1m(db_url, midnight - DAY_BEFORE)
        rest = {s: asyncio.run(rest_oi_hist(ex.base_url, s, midnight)) for s in SYMBOLS}
        assert main(argv) == 0  # a rerun, a few seconds later
        again = stored_oi(db_url)
        feats_again = features_1m(db_url, midnight - DAY_BEFORE)

    for sym in SYMBOLS:
        mine = first[first["symbol"] == sym]
        # yesterday from its metrics archive, up to 23:55
        yesterday = mine[(mine["t"] >= midnight - 86_400_000) & (mine["t"] < midnight)]
        assert set(yesterday["source"]) == {"metrics"} and yesterday["t"].max() == midnight - STEP
        # today: every 5 minutes from midnight up to the run (05:00), each the REST value
        today = mine[mine["t"] >= midnight]
        assert today["t"].tolist() == list(range(midnight, midnight + 5 * 3_600_000 + 1, STEP))
        assert set(today["source"]) == {"hist"} and today["recv_ts"].isna().all()
        assert [rest[sym][t] for t in today["t"]] == today["open_interest"].tolist()

    # the features of today follow it: each 5-minute step is a bar, its open interest the REST
    # value (carried into the bar: the last observation before its end), and it changes
    check_features_follow(db_url, first, midnight - DAY_BEFORE)
    for sym in SYMBOLS:
        f = feats[(feats["symbol"] == sym) & (feats["t"] >= midnight)]
        steps = list(range(midnight, midnight + 5 * 3_600_000 + 1, STEP))
        assert f["t"].tolist() == steps  # no trades today: the open interest alone makes these bars
        assert f["open_interest"].tolist() == [rest[sym][t] for t in steps]
        assert (f["oi_change_pct"] != 0).sum() >= len(steps) - 1

    # a rerun changes nothing it had: the same rows, the same features; only steps after the first run
    cut = first["t"].max()
    old = again[again["t"] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first.reset_index(drop=True))
    newer = again[again["t"] > cut]
    assert set(newer["source"]) <= {"hist"} and (newer["t"] % STEP == 0).all()
    pd.testing.assert_frame_equal(
        feats_again[feats_again["t"] <= feats["t"].max()].reset_index(drop=True), feats.reset_index(drop=True)
    )


DAY_BEFORE = 86_400_000


def test_live_run_after_a_backfill_fills_every_bar_since_midnight(db_url, ib_cache, tmp_path) -> None:
    """The backfill ended three days ago (its metrics archive: 03-03 up to 23:55); the live run fills
    03-04, 03-05 and today from openInterestHist (more than one page of 500) before its first poll."""
    start = datetime(2024, 3, 6, 2, 0, 57, tzinfo=UTC)  # the live run crosses into 02:01
    midnight = day_ms(TODAY)

    async def go():
        cfg = exchange_config(ib_cache, history_days=4, live_rate=5.0, clock_start=start)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            day = datetime(2024, 3, 3, tzinfo=UTC).date()
            hist = await collect_market_historical(settings, db_url, SYMBOLS, day, day, writer=writer)
            assert not hist.missing and not hist.rest_failed
            report = await collect_market_live(
                settings, db_url, SYMBOLS, live_seconds=4.0, writer=writer, oi_interval=1.0
            )
            await writer.close()
            rest = {s: await rest_oi_hist(ex.base_url, s, midnight - 2 * DAY_BEFORE) for s in SYMBOLS}
            return report, rest

    report, rest = asyncio.run(go())
    assert main(["--database-url", db_url, "--home", str(tmp_path), "features", "refresh"]) == 0
    oi = stored_oi(db_url)
    for sym in SYMBOLS:
        mine = oi[oi["symbol"] == sym]
        filled = mine[mine["source"] == "hist"]
        # from the first 5-minute step after the last stored row (03-03 23:55) up to the run's start
        assert filled["t"].tolist() == list(range(midnight - 2 * DAY_BEFORE, ms(start) + 1, STEP))
        assert len(filled) > 500
        assert filled["open_interest"].tolist() == [rest[sym][t] for t in filled["t"]]
        assert report.oi_filled[sym] == len(filled) and report.oi_polls[sym] >= 2
        polled = mine[mine["source"] == "rest"]
        assert len(polled) == report.oi_polls[sym] and (polled["t"] > ms(start) - 1000).all()

    # every bar since midnight (the 5-minute steps and the live bars) has today's open interest
    feats = check_features_follow(db_url, oi, midnight)
    assert feats["open_interest"].notna().all()
    for sym in SYMBOLS:
        bars = set(feats.loc[feats["symbol"] == sym, "t"])
        assert set(range(midnight, ms(start) + 1, STEP)) <= bars
        assert any(t > ms(start) for t in bars)  # and the live ones
