"""`microstructure status` reports what the bookkeeping tables and raw rows say."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
from day_partitions import day_partitions

from microstructure.status import collect_status


def test_status_reports_coverage_gaps_lag_and_events(db_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(db_url) as conn:
        day_partitions(conn, "agg_trades", now - timedelta(seconds=30), now)
        conn.execute(
            "INSERT INTO agg_trades VALUES ('BTCUSDT', 10, %s, 1, 1, 1, 1, false, %s),"
            " ('BTCUSDT', 20, %s, 1, 1, 2, 2, true, %s)",
            (now - timedelta(seconds=30), now, now - timedelta(seconds=5), now - timedelta(seconds=4)),
        )
        conn.execute(
            "INSERT INTO agg_trade_coverage (symbol, day, first_id, last_id, row_count, missing_count) VALUES "
            "('BTCUSDT', %s, 1, 9, 9, 0), ('BTCUSDT', %s, 10, 20, 2, 9)",
            (date(2024, 1, 1), date(2024, 1, 2)),
        )
        conn.execute(
            "INSERT INTO agg_trade_gaps (symbol, from_id, to_id, status) VALUES "
            "('BTCUSDT', 11, 19, 'open'), ('BTCUSDT', 3, 4, 'filled')"
        )
        conn.execute(
            "INSERT INTO ingest_events (collector, symbol, kind) VALUES ('book', 'BTCUSDT', 'resync'), "
            "('book', 'BTCUSDT', 'resync'), ('market', NULL, 'poll_miss')"
        )
    report = collect_status(db_url)
    (sym,) = report.symbols
    assert sym["symbol"] == "BTCUSDT"
    assert (sym["days"], sym["row_count"], sym["first_id"], sym["last_id"]) == (2, 11, 1, 20)
    assert (sym["missing_in_days"], sym["open_gaps"], sym["open_missing"], sym["filled_gaps"]) == (9, 1, 9, 1)
    assert 4 <= float(sym["lag_seconds"]) < 60  # the newest trade (id 20) is ~5 s old
    assert float(sym["recv_delay_seconds"]) == 1.0
    assert [(g["from_id"], g["to_id"], g["missing"]) for g in report.gaps] == [(11, 19, 9)]
    events = {(e["collector"], e["symbol"], e["kind"]): e["n"] for e in report.events}
    assert events == {("book", "BTCUSDT", "resync"): 2, ("market", "*", "poll_miss"): 1}
    tables = {t["table_name"]: t["row_count"] for t in report.tables}
    assert tables == dict.fromkeys(
        ["book_snapshots", "mark_prices", "funding_rates", "open_interest", "liquidations",
         "book_depth_bands", "futures_metrics", "price_klines"], 0
    )  # fmt: skip
