"""`microstructure reconcile`: stored days compared with their archive by id and repaired in SQL."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ih_helpers import run_collect, stored_rows

from microstructure.cli import main
from microstructure.config import Settings
from microstructure.exchange.config import ExchangeConfig
from microstructure.exchange.server import ExchangeThread
from microstructure.features_sql.refresher import refresh_once

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
import reference
from fx_helpers import assert_frames_match, load_raw, read_features

D10, D11, D12 = date(2022, 8, 10), date(2022, 8, 11), date(2022, 8, 12)
EXTRA_ID = 10**12


def day_rows(dsn: str, d: date) -> list[tuple[Any, ...]]:
    rows = stored_rows(dsn, "BTCUSDT")
    t0 = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    cols = list(rows)
    return [r for r in zip(*(rows[c] for c in cols), strict=True) if t0 <= r[1] < t0 + 86_400_000]


def features_of_day(dsn: str, tf: str, d: date):  # type: ignore[no-untyped-def]
    got = read_features(dsn, tf, ["BTCUSDT"])
    b = got.index.get_level_values("bucket")
    return got[
        (b >= datetime(d.year, d.month, d.day, tzinfo=UTC))
        & (b < datetime(d.year, d.month, d.day + 1, tzinfo=UTC))
    ]


def reconcile(dsn: str, home: Path, base_url: str, capsys, *extra: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code = main(
        ["--database-url", dsn, "--home", str(home), "reconcile", "--symbol", "BTCUSDT",
         "--start", str(D10), "--end", str(D12), "--exchange-url", base_url, *extra]
    )  # fmt: skip
    return code, capsys.readouterr().out


def _three_days(cache: Path) -> ExchangeConfig:
    """The local exchange of these tests: three archived days of 6,000 trades."""
    return ExchangeConfig(
        cache_dir=cache,
        history_days=3,
        trades_per_day=6_000,
        clock_start=datetime(2022, 8, 12, 6, 0, tzinfo=UTC),
    )


def _settings(tmp_path: Path, db_url: str, base_url: str) -> Settings:
    settings = Settings(home=tmp_path / "home", database_url=db_url)
    settings.point_at_exchange(base_url)
    return settings


def test_damaged_day_is_restored_verified_and_a_reupload_reconciled_again(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys
) -> None:
    with ExchangeThread(_three_days(exchange_cache)) as ex:
        settings = _settings(tmp_path, db_url, ex.base_url)
        report = asyncio.run(run_collect(settings, db_url, ["BTCUSDT"], D10, D11))
        assert report.ok
        asyncio.run(refresh_once(db_url))
        pristine = day_rows(db_url, D11)
        want = {tf: reference.features(load_raw(db_url), tf) for tf in ("1m", "5m")}
        ids = [r[0] for r in pristine]
        deleted = ids[100:103] + ids[2000:2002]
        changed = ids[3000]
        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM agg_trades WHERE symbol = 'BTCUSDT' AND agg_id = ANY(%s)", (deleted,))
            conn.execute(
                "UPDATE agg_trades SET price = price + 1 WHERE symbol = 'BTCUSDT' AND agg_id = %s", (changed,)
            )
            conn.execute(
                "INSERT INTO agg_trades (symbol, agg_id, ts, price, quantity, first_trade_id, last_trade_id, "
                "is_buyer_maker) VALUES ('BTCUSDT', %s, '2022-08-11 12:00:00+00', 20000, 1, %s, %s, true)",
                (EXTRA_ID, EXTRA_ID, EXTRA_ID),
            )
            conn.execute(
                "INSERT INTO raw_invalidations (table_name, symbol, lo, hi) "
                "VALUES ('agg_trades', 'BTCUSDT', '2022-08-11', '2022-08-12')"
            )
        asyncio.run(refresh_once(db_url))
        damaged = features_of_day(db_url, "1m", D11)
        with pytest.raises(AssertionError):  # the damage shows in the features
            assert_frames_match(damaged, want["1m"].loc[damaged.index.intersection(want["1m"].index)])

        code, out = reconcile(db_url, tmp_path / "home", ex.base_url, capsys)
        assert code == 0, out
        assert "BTCUSDT 2022-08-11: verified" in out
        assert "5 missing inserted, 1 differing replaced, 1 not in the archive" in out
        assert f"differs id {changed}: price" in out
        assert f"not in the archive: ids {EXTRA_ID}" in out
        assert "BTCUSDT 2022-08-10: verified" in out and "0 missing inserted, 0 differing" in out
        assert "2 days reconciled (5 missing, 1 differing, 1 extra)" in out
        assert day_rows(db_url, D11) == pristine
        with psycopg.connect(db_url) as conn:
            cov = dict(conn.execute(
                "SELECT day, verified_sha256 FROM agg_trade_coverage WHERE symbol = 'BTCUSDT' ORDER BY day"
            ).fetchall())  # fmt: skip
            displaced = conn.execute(
                "SELECT agg_id, reason FROM archive_displaced ORDER BY agg_id"
            ).fetchall()
            evs = [
                d if isinstance(d, dict) else json.loads(d)
                for (d,) in conn.execute(
                    "SELECT detail FROM ingest_events WHERE collector = 'reconcile' AND kind = 'reconciled' ORDER BY id"
                ).fetchall()
            ]
            verified = conn.execute(
                "SELECT day, missing, differing, extra FROM archive_verified WHERE dataset = 'aggTrades' ORDER BY day"
            ).fetchall()
            cov_row = conn.execute(
                "SELECT row_count, missing_count FROM agg_trade_coverage WHERE symbol = 'BTCUSDT' AND day = %s",
                (D11,),
            ).fetchone()
        published = _published_sha(ex, D11)
        assert cov[D11] == published and cov[D10] == _published_sha(ex, D10)
        assert displaced == [(changed, "differs"), (EXTRA_ID, "not_in_archive")]
        assert [(e["day"], e["missing"], e["differing"], e["extra"]) for e in evs] == [
            ("2022-08-10", 0, 0, 0), ("2022-08-11", 5, 1, 1),
        ]  # fmt: skip
        assert evs[1]["differences"][0]["fields"] == ["price"] and evs[1]["extra_ids"] == [EXTRA_ID]
        assert verified == [(D10, 0, 0, 0), (D11, 5, 1, 1)]
        assert cov_row == (len(pristine), 0)
        for tf in ("1m", "5m"):
            got = features_of_day(db_url, tf, D11)
            w = want[tf]
            wb = w.index.get_level_values("bucket")
            w = w[(wb >= datetime(2022, 8, 11, tzinfo=UTC)) & (wb < datetime(2022, 8, 12, tzinfo=UTC))]
            assert len(got) == len(w) > 0
            assert_frames_match(got, w, label=tf)

        # a second run changes nothing
        before_inv = _count(db_url, "raw_invalidations")
        code, out = reconcile(db_url, tmp_path / "home", ex.base_url, capsys)
        assert code == 0
        assert "0 days reconciled (0 missing, 0 differing, 0 extra), 2 unchanged" in out
        assert day_rows(db_url, D11) == pristine
        assert _count(db_url, "raw_invalidations") == before_inv
        assert _count(db_url, "archive_displaced") == 2

        # a re-uploaded archive (new checksum) is reconciled again on the next run
        ex.reupload_archive("aggTrades", "BTCUSDT", D11)
        new_sha = _published_sha(ex, D11)
        assert new_sha != published
        code, out = reconcile(db_url, tmp_path / "home", ex.base_url, capsys)
        assert code == 0, out
        assert "BTCUSDT 2022-08-11: verified against sha256 " + new_sha[:12] in out
        assert "0 missing inserted, 1 differing replaced, 0 not in the archive" in out
        assert "quantity" in out
        assert "1 days reconciled (0 missing, 1 differing, 0 extra), 1 unchanged" in out
        with psycopg.connect(db_url) as conn:
            assert conn.execute(
                "SELECT verified_sha256 FROM agg_trade_coverage WHERE symbol = 'BTCUSDT' AND day = %s", (D11,)
            ).fetchone() == (new_sha,)
        code, out = reconcile(db_url, tmp_path / "home", ex.base_url, capsys)
        assert "0 days reconciled" in out and "2 unchanged" in out


def _published_sha(ex: Any, d: date) -> str:
    import urllib.request

    with urllib.request.urlopen(ex.archive_url("aggTrades", "BTCUSDT", d) + ".CHECKSUM") as r:
        return r.read().decode().split()[0]


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_bad_arguments_are_one_line(db_url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base = ["--database-url", db_url, "--home", str(tmp_path / "home"), "reconcile"]
    for argv, culprit in (
        (["--symbol", "BTCUSDT", "--all-symbols", "--start", "2022-08-10"], "--all-symbols"),
        (["--start", "2022-08-10"], "--symbol"),
        (["--symbol", "BTCUSDT", "--start", "2022-13-10"], "--start"),
        (["--symbol", "BTCUSDT", "--start", "2022-08-10", "--end", "2022-08-09"], "--end"),
    ):
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0] and "Traceback" not in err[0]


def test_all_symbols_with_nothing_stored(db_url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(
        ["--database-url", db_url, "--home", str(tmp_path / "home"), "reconcile", "--all-symbols",
         "--start", "2022-08-10", "--exchange-url", "http://127.0.0.1:9"]
    )  # fmt: skip
    assert code == 0
    assert "0 days reconciled (0 missing, 0 differing, 0 extra), 0 unchanged" in capsys.readouterr().out


def test_book_depth_day_loaded_again_from_its_archive(
    db_url: str, tmp_path: Path, exchange_cache: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from microstructure.ingest.collectors.book import collect_book_historical

    with ExchangeThread(_three_days(exchange_cache)) as ex:
        settings = _settings(tmp_path, db_url, ex.base_url)
        asyncio.run(collect_book_historical(settings, db_url, ["BTCUSDT"], D11, D11))
        q = "SELECT ts, percentage, depth, notional FROM book_depth_bands WHERE symbol = 'BTCUSDT' ORDER BY ts, percentage"
        with psycopg.connect(db_url) as conn:
            pristine = conn.execute(q).fetchall()
            assert len(pristine) > 1000
            conn.execute("DELETE FROM book_depth_bands WHERE ts < '2022-08-11 01:00+00'")
            conn.execute("UPDATE book_depth_bands SET depth = depth * 2 WHERE ts > '2022-08-11 12:00+00'")
        argv = ["--database-url", db_url, "--home", str(tmp_path / "home"), "reconcile", "--symbol", "BTCUSDT",
                "--start", str(D11), "--datasets", "bookDepth", "--exchange-url", ex.base_url]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"BTCUSDT {D11}: bookDepth loaded again from its archive ({len(pristine)} rows" in out
        with psycopg.connect(db_url) as conn:
            assert conn.execute(q).fetchall() == pristine
        assert main(argv) == 0
        assert f"BTCUSDT bookDepth {D11}: already verified" in capsys.readouterr().out
        ex.reupload_archive("bookDepth", "BTCUSDT", D11)
        assert main(argv) == 0
        assert "bookDepth loaded again" in capsys.readouterr().out
        with psycopg.connect(db_url) as conn:
            after = conn.execute(q).fetchall()
            sha = conn.execute("SELECT sha256 FROM archive_verified WHERE dataset = 'bookDepth'").fetchall()
        assert len(after) == len(pristine) and sum(a != b for a, b in zip(after, pristine, strict=True)) == 1
        assert sha == [(_published_sha_of(ex, "bookDepth", D11),)]


def _published_sha_of(ex: Any, kind: str, d: date) -> str:
    import urllib.request

    with urllib.request.urlopen(ex.archive_url(kind, "BTCUSDT", d) + ".CHECKSUM") as r:
        return r.read().decode().split()[0]


def test_reconcile_interval_bad_value_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["--home", str(tmp_path / "home"), "collect", "all", "--symbol", "BTCUSDT", "--mode", "live",
            "--reconcile-interval", "soon"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reconcile-interval" in err[0] and "'soon'" in err[0]
    assert main([*argv[:-1], "-5"]) == 2
    assert "--reconcile-interval" in capsys.readouterr().err
