"""The CLI as a user meets it: help on every level, one-line errors, the embedded server shared
between commands and never started twice by concurrent processes."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from microstructure.cli import build_parser, main
from microstructure.config import SettingError
from microstructure.db.capabilities import engine_override
from microstructure.db.connect import describe_host
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


def _command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path the CLI has, nested subcommands included: (), ("db",), ("db", "url"), ..."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*path, name))


def test_help_lists_subcommands_on_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for name in ("demo", "db", "status", "exchange", "collect"):
        assert name in top.stdout
    db = run_cli("db", "--help")
    assert db.returncode == 0
    for name in ("url", "status", "stop", "upgrade", "downgrade", "schema"):
        assert name in db.stdout
    # Nested levels as a user types them, in a fresh process.
    for path in (("db", "url"), ("collect", "aggtrades"), ("exchange", "serve")):
        res = run_cli(*path, "--help")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("usage: microstructure " + " ".join(path)), res.stdout
    # Every level, walked from the parser tree so a new subcommand is covered without editing this test.
    paths = list(_command_paths(build_parser()))
    assert ("collect", "all") in paths and ("db", "downgrade") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0, path
        assert out.startswith(" ".join(("usage: microstructure", *path))), (path, out[:200])


# (URL, what the one error line must name): unreachable hosts, URLs libpq cannot parse, a socket directory.
BAD_URLS = [
    ("postgresql://u:secret@127.0.0.1:1/nodb", ["127.0.0.1:1", "refused"]),
    ("postgresql://u:secret@127.0.0.1:1/x?foo=bar", ["127.0.0.1:1", "malformed", '"foo"']),
    ("postgresql://u:secret@[::1/x", ["malformed", "IPv6"]),
    ("postgresql:///x?host=/nonexistent", ["unix socket /nonexistent/.s.PGSQL.5432", "No such file"]),
    ("postgresql://u:secret@[::1]:1/x", ["[::1]:1"]),
]
BAD_URL_COMMANDS = [
    ("db", "upgrade"),
    ("db", "schema"),
    ("status",),
    ("collect", "aggtrades", "--symbol", "BTCUSDT", "--mode", "historical", "--days", "1"),
]


def _assert_one_clear_line(res: subprocess.CompletedProcess, must_name: list[str]) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("microstructure: error: "), lines[0]
    for text in must_name:
        assert text.lower() in lines[0].lower(), (text, lines[0])
    assert "secret" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", BAD_URL_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_bad_database_url_is_one_clear_line_naming_host_and_reason(command: tuple[str, ...]) -> None:
    for url, must_name in BAD_URLS:
        _assert_one_clear_line(run_cli("--database-url", url, *command), must_name)


def test_bad_database_url_from_the_environment_and_a_wrong_scheme() -> None:
    res = run_cli(
        "db", "upgrade", env={"MICROSTRUCTURE_DATABASE_URL": "postgresql://u@no-such-host.invalid/x"}
    )
    _assert_one_clear_line(res, ["no-such-host.invalid:5432", "resolve"])
    res = run_cli("--database-url", "mysql://u@h/x", "db", "upgrade")
    _assert_one_clear_line(res, ["expected a postgresql://"])
    # Printing the DSN needs no connection, but a URL libpq cannot parse is still one line.
    res = run_cli("--database-url", "postgresql://u:secret@[::1/x", "db", "url")
    _assert_one_clear_line(res, ["malformed"])


def test_describe_host_reads_the_url_as_libpq_does() -> None:
    assert describe_host("postgresql://u:p@db.example:6543/x") == "db.example:6543"
    assert describe_host("postgresql://u@h:1/x?host=other&port=7") == "other:7"
    assert describe_host("postgresql:///x?host=/run/pg") == "unix socket /run/pg/.s.PGSQL.5432"
    assert describe_host("postgresql://%2Frun%2Fpg:6000/x") == "unix socket /run/pg/.s.PGSQL.6000"
    assert describe_host("postgresql://h1:1,h2:2/x") == "h1:1 or h2:2"
    assert describe_host("postgresql://[::1]/x") == "[::1]:5432"
    assert describe_host("postgresql://u@[::1/x") == "a malformed URL"


def test_bad_engine_setting_is_one_line_naming_the_variable(db_url: str) -> None:
    res = run_cli("--database-url", db_url, "db", "upgrade", env={"MICROSTRUCTURE_ENGINE": "timescale"})
    _assert_one_clear_line(
        res, ["MICROSTRUCTURE_ENGINE", "auto, postgresql, timescaledb-apache", "'timescale'"]
    )
    with pytest.raises(SettingError, match="MICROSTRUCTURE_ENGINE"):
        engine_override("nope")
    assert engine_override("auto") is None and engine_override("postgresql") == "postgresql"


def test_bad_argument_names_the_argument() -> None:
    res = run_cli("db", "frobnicate")
    assert res.returncode == 2
    assert "invalid choice: 'frobnicate'" in res.stderr and "url" in res.stderr


def test_two_processes_at_once_share_one_embedded_server(tmp_path: Path) -> None:
    locked = tmp_path / "locked"  # a private folder above the project folder, as /root is
    locked.mkdir(mode=0o700)
    home = locked / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROSTRUCTURE_")}
    cmd = [sys.executable, "-m", "microstructure", "--home", str(home), "db", "upgrade"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert all("schema at revision 0009" in o[0] for o in outs)
        urls = {run_cli("db", "url", home=home).stdout.strip() for _ in range(2)}
        assert len(urls) == 1
        url = urls.pop()
        status = EmbeddedPostgres(home).status()
        assert status.running and f":{status.port}/" in url
        # It asks for a password (scram-sha-256), generated at initdb and kept 0600 in the home folder:
        # another local user cannot connect without it.
        pw_file = home / "embedded-password"
        assert (
            stat.S_IMODE(pw_file.stat().st_mode) == 0o600 and status.password == pw_file.read_text().strip()
        )
        assert f"postgres:{status.password}@" in url
        for wrong in (f"postgresql://postgres@127.0.0.1:{status.port}/microstructure",
                      f"postgresql://postgres:guess@127.0.0.1:{status.port}/microstructure"):  # fmt: skip
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(wrong, connect_timeout=5)
        postmasters = subprocess.run(
            ["pgrep", "-f", f"postgres.*-D {home / 'pgdata'}"], capture_output=True, text=True
        )
        with psycopg.connect(url) as conn:
            # One server, and the data written by one command is seen by the next.
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert len(postmasters.stdout.split()) == 1, postmasters.stdout
        assert "running" in run_cli("db", "status", home=home).stdout
        # As root the server runs as a system user, which only needs to traverse the folders above
        # its data: o+x is added where missing, nothing is made readable (listable) by others.
        want = 0o701 if os.geteuid() == 0 else 0o700
        assert stat.S_IMODE(locked.stat().st_mode) == want
    finally:
        stop = run_cli("db", "stop", home=home)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not EmbeddedPostgres(home).status().running
    assert "stopped" in run_cli("db", "status", home=home).stdout


def test_demo_runs_the_whole_job_and_continues_where_it_stopped(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    argv = ["demo", "--history-days", "1", "--live-seconds", "12", "--trades-per-day", "5000"]
    try:
        res = run_cli(*argv, home=home)
        assert res.returncode == 0, res.stderr
        for part in ("== backfill", "== live", "== export", "== feature pull", "== chart", "== summary",
                     "open aggregate-trade gaps: 0", "healed:", "features_1m (last 5 bars, UTC)"):  # fmt: skip
            assert part in res.stdout, part
        assert "faults on" in res.stdout
        out = home / "demo"
        assert (out / "chart.png").stat().st_size > 10_000
        import duckdb

        glob = str(out / "data" / "features_1m" / "*" / "*" / "*" / "*" / "*" / "data.parquet")
        bars = duckdb.sql(f"SELECT count(*), count(DISTINCT symbol) FROM read_parquet('{glob}')").fetchall()[
            0
        ]
        assert bars[0] > 1000 and bars[1] == 2
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
                )  # 500 ms snapshots of the live run
            assert conn.execute("SELECT count(*) FROM agg_trade_gaps WHERE status = 'open'").fetchone() == (
                0,
            )
            # the backfill loads yesterday's archives of the other kinds too, for both symbols
            yesterday = "(now() AT TIME ZONE 'UTC')::date - 1"
            for table, where in (
                ("book_depth_bands", f"(ts AT TIME ZONE 'UTC')::date = {yesterday}"),
                ("futures_metrics", f"(ts AT TIME ZONE 'UTC')::date = {yesterday}"),
                ("price_klines", f"(ts AT TIME ZONE 'UTC')::date = {yesterday}"),
                ("funding_rates", "true"),
            ):
                symbols = conn.execute(
                    f"SELECT DISTINCT symbol FROM {table} WHERE {where} ORDER BY 1"
                ).fetchall()
                assert symbols == [("BTCUSDT",), ("ETHUSDT",)], table
            klines = conn.execute(
                f"SELECT symbol, kind, count(*) FROM price_klines WHERE (ts AT TIME ZONE 'UTC')::date = {yesterday}"
                " GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            assert klines == [
                (s, k, 1440) for s in ("BTCUSDT", "ETHUSDT") for k in ("index", "mark", "premium")
            ]
            files = {p: p.stat().st_mtime_ns for p in (out / "data").rglob("data.parquet")}
        # again: the backfill finds its days complete, the export rewrites only what changed
        again = run_cli(
            "demo", "--history-days", "1", "--live-seconds", "3", "--trades-per-day", "5000", home=home
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("1 already complete") == 2  # yesterday, for both symbols, is complete now
        unchanged = [p for p, t in files.items() if p.stat().st_mtime_ns == t]
        assert len(unchanged) > len(files) // 2, "an unchanged hour was rewritten"
    finally:
        run_cli("db", "stop", home=home)


def test_a_trust_data_folder_from_before_passwords_is_secured_on_its_next_start(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "home")
    st = server.ensure_running()
    try:
        # make it look like an older version's folder: trust for everyone, no password file
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        server.password_file.unlink()
        server.stop()
        st = server.ensure_running()
        assert st.password and server.password_file.exists()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{st.port}/postgres", connect_timeout=5)
        with psycopg.connect(st.dsn("postgres")) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        server.stop()


def test_an_older_data_folder_gets_the_newer_server_defaults_that_fit_its_settings(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "home")
    conf = server.data_dir / "postgresql.conf"

    def show(*names: str) -> tuple[str, ...]:
        with psycopg.connect(server.ensure_running().dsn("postgres")) as conn:
            return tuple(conn.execute(f"SHOW {n}").fetchone()[0] for n in names)

    def restart_with(edit: Callable[[str], str]) -> tuple[str, ...]:
        server.stop()
        conf.write_text(edit(conf.read_text()))
        return show("wal_level", "max_wal_senders", "wal_init_zero", "archive_mode")

    newer = ("wal_level = minimal\n", "max_wal_senders = 0\n", "wal_init_zero = off\n")

    def as_older(text: str) -> str:
        for line in newer:
            assert line in text
            text = text.replace(line, "")
        return text

    try:
        assert show("wal_level", "max_wal_senders", "wal_init_zero") == ("minimal", "0", "off")
        # a folder from before those defaults whose owner archives WAL: minimal WAL would keep the
        # server from starting, so that group stays out; the rest is added
        archiving = "archive_mode = on\narchive_command = '/bin/true'\n"
        assert restart_with(lambda t: as_older(t) + archiving) == ("replica", "10", "off", "on")
        assert conf.read_text().count("wal_init_zero = off") == 1
        # archiving given up: the next start adds the group too
        assert restart_with(lambda t: t.replace(archiving, "")) == ("minimal", "0", "off", "off")
        # a setting made with ALTER SYSTEM is the owner's as well
        server.stop()
        conf.write_text(as_older(conf.read_text()))
        (server.data_dir / "postgresql.auto.conf").write_text("wal_level = 'replica'\n")
        assert show("wal_level", "wal_init_zero") == ("replica", "off")
        assert "wal_level = minimal" not in conf.read_text()
    finally:
        server.stop()
