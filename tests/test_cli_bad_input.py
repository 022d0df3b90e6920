"""Bad input a user meets before anything runs: one line naming the culprit, exit code 2, no
traceback. A URL that is not an exchange, a project folder that cannot be used, a health port
already taken, a database role that may not create the schema, --days 0 on every historical command."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pglite_server import free_port
from test_cli_foundation import _assert_one_clear_line, run_cli

from microstructure.cli import build_parser
from microstructure.ingest.cli import _days


@pytest.fixture
def web_page(tmp_path: Path) -> Iterator[str]:
    """A plain web server (Python's http.server) on loopback: HTML pages and HTML 404s, not Binance."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<html><body><h1>Welcome to nginx!</h1></body></html>")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    "command",
    [
        ("collect", "aggtrades", "--symbol", "BTCUSDT", "--mode", "historical", "--days", "1"),
        ("collect", "market", "--symbol", "BTCUSDT", "--mode", "historical", "--days", "1"),
    ],
    ids=["aggtrades", "market"],
)
def test_a_url_that_is_not_an_exchange_is_one_line(
    db_url: str, web_page: str, command: tuple[str, ...]
) -> None:
    res = run_cli("--database-url", db_url, *command, "--exchange-url", web_page)
    _assert_one_clear_line(res, [web_page, "text/html", "404", "is this a Binance USD-M Futures API"])


def test_a_project_folder_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for home, why in ((a_file, "not a folder"), (a_file / "below", "cannot write there")):
        for command in (("db", "url"), ("collect", "aggtrades", "--symbol", "BTCUSDT", "--days", "1")):
            res = run_cli(*command, home=home)
            _assert_one_clear_line(res, [str(home), why])


def test_a_health_port_in_use_is_refused_before_anything_starts(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        res = run_cli(
            "--database-url", db_url, "collect", "all", "--symbol", "BTCUSDT", "--mode", "live",
            "--health-port", str(port), "--exchange-url", "http://127.0.0.1:9",
        )  # fmt: skip
        _assert_one_clear_line(res, [f"--health-port {port}", f"127.0.0.1:{port}", "in use"])
        assert time.monotonic() - t0 < 60
    with psycopg.connect(db_url) as conn:  # refused before the collector touched anything
        assert conn.execute("SELECT count(*) FROM ingest_events").fetchone() == (0,)


def test_a_role_without_privileges_is_told_to_run_the_upgrade_as_the_owner(
    pg_server: str, empty_db: str
) -> None:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS ms_reader")
        conn.execute("CREATE ROLE ms_reader LOGIN PASSWORD 'reader-pw'")
    try:
        parts = urlsplit(empty_db)
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urlunsplit((parts.scheme, f"ms_reader:reader-pw@{host}", parts.path, parts.query, ""))
        res = run_cli("--database-url", url, "db", "upgrade")
        _assert_one_clear_line(res, ["ms_reader lacks privileges", "permission denied", "schema's owner"])
        assert "reader-pw" not in res.stderr
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute("DROP ROLE ms_reader")


@pytest.mark.parametrize("command", ["aggtrades", "book-depth", "market", "all"])
def test_days_0_means_today_so_far_on_every_historical_command(command: str) -> None:
    args = build_parser().parse_args(
        ["collect", command, "--symbol", "BTCUSDT", "--mode", "historical", "--days", "0"]
    )
    if command == "aggtrades":
        assert args.days in ("0", 0)
    else:
        assert _days(args) == (None, None, 0)
    res = run_cli("collect", command, "--symbol", "BTCUSDT", "--mode", "historical", "--days", "-1")
    _assert_one_clear_line(res, ["--days"])
