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


def test_status_tells_quiet_spans_from_loss_per_day(db_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from microstructure.status import print_status

    d1 = datetime(2024, 1, 1, tzinfo=UTC)
    d2 = d1 + timedelta(days=1)
    # (id, seconds into its day): day 1 has a 200 s halt with contiguous ids (3 -> 4) and a 1 s span
    # that lost ids 6..8 (5 -> 9); day 2 continues at id 10 (contiguous with 9) after 90 s of day 2,
    # then a 70 s quiet span and a 30 s one (under the threshold)
    day1 = [(1, 0), (2, 1), (3, 2), (4, 202), (5, 203), (9, 204)]
    day2 = [(10, 90), (11, 160), (12, 190)]
    rows = [(i, d1 + timedelta(seconds=s)) for i, s in day1] + [
        (i, d2 + timedelta(seconds=s)) for i, s in day2
    ]
    with psycopg.connect(db_url) as conn:
        day_partitions(conn, "agg_trades", d1, d2 + timedelta(hours=1))
        for i, ts in rows:
            conn.execute(
                "INSERT INTO agg_trades VALUES ('ETHUSDT', %s, %s, 1, 1, %s, %s, false, NULL)", (i, ts, i, i)
            )
        conn.execute(
            "INSERT INTO agg_trade_coverage (symbol, day, first_id, last_id, row_count, missing_count, "
            "verified_sha256) VALUES ('ETHUSDT', %s, 1, 9, 6, 3, NULL), ('ETHUSDT', %s, 10, 12, 3, 0, %s)",
            (d1.date(), d2.date(), "ab" * 32),
        )
    report = collect_status(db_url, days=2, quiet_seconds=60)
    got = [
        (r["day"], r["row_count"], r["lost_ids"], r["loss_spans"], r["quiet_spans"], r["quiet_seconds"],
         r["longest_quiet_seconds"], r["verified_sha256"])
        for r in report.days
    ]  # fmt: skip
    assert got == [
        (d1.date(), 6, 3, 1, 1, 200.0, 200.0, None),
        # the span from day 1's last trade (id 9) to id 10 is 90 + 86400 - 204 s: contiguous, quiet
        (d2.date(), 3, 0, 0, 2, (86_400 - 204 + 90) + 70.0, 86_400 - 204 + 90.0, "ab" * 32),
    ]
    # only the last stored day, and a higher threshold
    (only,) = collect_status(db_url, days=1, quiet_seconds=80).days
    assert (only["day"], only["quiet_spans"], only["lost_ids"]) == (
        d2.date(),
        0,
        0,
    )  # 70 s < 80 s; no predecessor
    print_status(report, quiet_seconds=60)
    out = capsys.readouterr().out
    assert (
        "loss (a gap in the ids) vs quiet" in out and "verified abababababab" in out and "not verified" in out
    )
