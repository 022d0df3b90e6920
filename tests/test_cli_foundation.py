"""The CLI as a user meets it: help on every level, one-line errors, the embedded server shared
between commands and never started twice by concurrent processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from microstructure.cli import build_parser
from microstructure.db.embedded import EmbeddedPostgres


def run_cli(
    *args: str, home: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSTRUCTURE_")}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "microstructure"]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=full_env)


def test_help_lists_subcommands_on_every_level() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for name in ("demo", "db"):
        assert name in top.stdout
    db = run_cli("db", "--help")
    assert db.returncode == 0
    for name in ("url", "status", "stop", "upgrade", "downgrade", "schema"):
        assert name in db.stdout
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, sp in sub.choices.items():  # every command answers --help
        assert sp.format_help().startswith("usage: microstructure " + name)


def test_bad_database_url_is_one_clear_line_naming_host_and_reason() -> None:
    res = run_cli("--database-url", "postgresql://u:secret@127.0.0.1:1/nodb", "db", "upgrade")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "127.0.0.1:1" in lines[0] and "refused" in lines[0].lower()
    assert "secret" not in res.stderr and "Traceback" not in res.stderr
    res = run_cli(
        "db", "upgrade", env={"MICROSTRUCTURE_DATABASE_URL": "postgresql://u@no-such-host.invalid/x"}
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no-such-host.invalid:5432" in res.stderr and "resolve" in res.stderr
    res = run_cli("--database-url", "mysql://u@h/x", "db", "upgrade")
    assert res.returncode == 2 and "expected a postgresql://" in res.stderr


def test_bad_argument_names_the_argument() -> None:
    res = run_cli("db", "frobnicate")
    assert res.returncode == 2
    assert "invalid choice: 'frobnicate'" in res.stderr and "url" in res.stderr


def test_two_processes_at_once_share_one_embedded_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSTRUCTURE_")}
    cmd = [sys.executable, "-m", "microstructure", "--home", str(home), "db", "upgrade"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert all("schema at revision 0002" in o[0] for o in outs)
        urls = {run_cli("db", "url", home=home).stdout.strip() for _ in range(2)}
        assert len(urls) == 1
        url = urls.pop()
        status = EmbeddedPostgres(home).status()
        assert status.running and f":{status.port}/" in url
        postmasters = subprocess.run(
            ["pgrep", "-f", f"postgres.*-D {home / 'pgdata'}"], capture_output=True, text=True
        )
        with psycopg.connect(url) as conn:
            # One server, and the data written by one command is seen by the next.
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert len(postmasters.stdout.split()) == 1, postmasters.stdout
        assert "running" in run_cli("db", "status", home=home).stdout
    finally:
        stop = run_cli("db", "stop", home=home)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not EmbeddedPostgres(home).status().running
    assert "stopped" in run_cli("db", "status", home=home).stdout


def test_demo_backfills_collects_live_and_prints_the_schema(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    argv = ["demo", "--history-days", "1", "--live-seconds", "4", "--trades-per-day", "5000"]
    try:
        res = run_cli(*argv, home=home)
        assert res.returncode == 0, res.stderr
        assert "== backfill" in res.stdout and "== live" in res.stdout
        for table in ("agg_trades", "book_snapshots", "mark_prices", "agg_trade_gaps"):
            assert table in res.stdout
        assert "engine postgresql" in res.stdout
        dsn = run_cli("db", "url", home=home).stdout.strip()
        with psycopg.connect(dsn) as conn:
            for sym in ("BTCUSDT", "ETHUSDT"):
                n, lo, hi, days = conn.execute(
                    "SELECT count(*), min(agg_id), max(agg_id), count(DISTINCT ts::date) "
                    "FROM agg_trades WHERE symbol = %s",
                    (sym,),
                ).fetchone()
                assert n == hi - lo + 1 and days == 2  # yesterday's archive + today, no id missing
                assert (
                    conn.execute("SELECT count(*) FROM book_snapshots WHERE symbol = %s", (sym,)).fetchone()[
                        0
                    ]
                    >= 4
                )  # 500 ms snapshots over the 4 s live run
            assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (
                0,
            )
    finally:
        run_cli("db", "stop", home=home)
