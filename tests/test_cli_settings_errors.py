"""Errors about settings (issue 29): one check of the project folder for every command, passwords
masked by their position in the URL (never by searching their text), a wrong scheme echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pglite_server import free_port
from test_cli_foundation import _assert_one_clear_line, run_cli

from microstructure.db.connect import _redact, mask_url

COMMANDS = [
    ("db", "status"),
    ("db", "url"),
    ("db", "stop"),
    ("status",),
    ("features", "show", "--symbol", "BTCUSDT"),
    ("collect", "aggtrades", "--symbol", "BTCUSDT", "--days", "1"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_home_that_is_a_file_is_one_line_exit_2_for_every_command(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    a_file = tmp_path / "home-file"
    a_file.write_text("x")
    res = run_cli(*command, env={"MICROSTRUCTURE_HOME": str(a_file)})
    _assert_one_clear_line(res, [f"MICROSTRUCTURE_HOME / --home {a_file}: not a folder (a file is there)"])
    assert res.stderr.strip() == (
        f"microstructure: error: MICROSTRUCTURE_HOME / --home {a_file}: not a folder (a file is there)"
    )


@pytest.mark.parametrize("password", ["o", "x", "e", "127"])
def test_a_short_password_is_masked_by_position_not_by_text(password: str) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres:{password}@127.0.0.1:{port}/db"
    res = run_cli("--database-url", url, "db", "status")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"microstructure: error: cannot connect to database at 127.0.0.1:{port}: Connection refused "
        "Is the server running on that host and accepting TCP/IP connections?"
    )
    # a message that echoes the URL: the password field alone is masked, every other 'x' or 'o' stays
    text = f"connection timeout expired for {url} (host 127.0.0.1) password={password} options"
    assert _redact(text, url) == (
        f"connection timeout expired for postgresql://postgres:***@127.0.0.1:{port}/db (host 127.0.0.1) "
        "password=*** options"
    )


def test_a_wrong_scheme_is_echoed_with_its_scheme_and_the_password_masked() -> None:
    res = run_cli("--database-url", "mysql://root:s3cret@127.0.0.1/x", "db", "status")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "microstructure: error: database URL 'mysql://root:***@127.0.0.1/x': the scheme 'mysql://' is not "
        "PostgreSQL's; expected a postgresql://user:pass@host:port/dbname URL"
    )
    assert "s3cret" not in res.stderr


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert (
        mask_url("postgresql://u:p%40ss@h:5/d?sslmode=disable") == "postgresql://u:***@h:5/d?sslmode=disable"
    )
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"  # no password: nothing to mask
    assert mask_url("postgresql://u:a@b@h/d") == "postgresql://u:***@h/d"  # an unescaped @ in it
    assert mask_url("host=h user=u password='a b' dbname=d") == "host=h user=u password=*** dbname=d"
