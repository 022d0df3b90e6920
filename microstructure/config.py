"""Settings: one dataclass, filled from the environment, overridden by CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

BINANCE_FUTURES_REST = "https://fapi.binance.com"
BINANCE_FUTURES_WS = "wss://fstream.binance.com"
BINANCE_ARCHIVE = "https://data.binance.vision"
BINANCE_SPOT_REST = "https://api.binance.com"

ENV_PREFIX = "MICROSTRUCTURE_"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingError(f"{ENV_PREFIX}{name}: expected an integer, got {raw!r}") from None


class SettingError(ValueError):
    """A setting (environment variable or flag) has a value that cannot be used."""


@dataclass
class Settings:
    """Everything that can be configured, with the environment variable that sets it.

    database_url   MICROSTRUCTURE_DATABASE_URL   any PostgreSQL/TimescaleDB; unset = embedded PostgreSQL
    home           MICROSTRUCTURE_HOME           project folder for embedded data, spill files, caches
    embedded_port  MICROSTRUCTURE_EMBEDDED_PORT  TCP port of the embedded server (0 = pick a free one)
    rest_url       MICROSTRUCTURE_REST_URL       Binance USD-M Futures REST base
    ws_url         MICROSTRUCTURE_WS_URL         Binance USD-M Futures websocket base
    archive_url    MICROSTRUCTURE_ARCHIVE_URL    data.binance.vision base
    spot_url       MICROSTRUCTURE_SPOT_URL       Binance spot REST base
    spill_max_mb   MICROSTRUCTURE_SPILL_MAX_MB   at most this many MB of spill files (unset: the disk's room)
    retention_keep_days  MICROSTRUCTURE_RETENTION_KEEP_DAYS  `retention`'s default --keep-days
    """

    database_url: str | None = field(default_factory=lambda: _env("DATABASE_URL"))
    home: Path = field(default_factory=lambda: Path(_env("HOME", ".microstructure") or ".microstructure"))
    embedded_port: int = field(default_factory=lambda: _env_int("EMBEDDED_PORT", 0))
    rest_url: str = field(default_factory=lambda: _env("REST_URL", BINANCE_FUTURES_REST) or "")
    ws_url: str = field(default_factory=lambda: _env("WS_URL", BINANCE_FUTURES_WS) or "")
    archive_url: str = field(default_factory=lambda: _env("ARCHIVE_URL", BINANCE_ARCHIVE) or "")
    spot_url: str = field(default_factory=lambda: _env("SPOT_URL", BINANCE_SPOT_REST) or "")
    spill_max_mb: int | None = field(
        default_factory=lambda: _env_int("SPILL_MAX_MB", -1) if _env("SPILL_MAX_MB") else None
    )
    retention_keep_days: int | None = field(
        default_factory=lambda: _env_int("RETENTION_KEEP_DAYS", -1) if _env("RETENTION_KEEP_DAYS") else None
    )

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        if self.spill_max_mb is not None and self.spill_max_mb < 1:
            raise SettingError(
                f"{ENV_PREFIX}SPILL_MAX_MB: expected a number of MB >= 1, got {self.spill_max_mb}"
            )
        if not 0 <= self.embedded_port <= 65535:
            raise SettingError(f"embedded port: expected 0..65535, got {self.embedded_port}")

    def point_at_exchange(self, base_url: str) -> None:
        """Point REST, websocket and archives at one server (the local exchange serves all three)."""
        base = base_url.rstrip("/")
        self.rest_url = base
        self.archive_url = base
        self.spot_url = base
        if base.startswith("https://"):
            self.ws_url = "wss://" + base.removeprefix("https://")
        elif base.startswith("http://"):
            self.ws_url = "ws://" + base.removeprefix("http://")
        else:
            raise SettingError(f"--exchange-url: expected an http:// or https:// URL, got {base_url!r}")


def not_a_folder(path: Path) -> str | None:
    """Why `path` can never be a folder (it, or a folder above it, is a file), or None; reads only."""
    if path.exists():
        return None if path.is_dir() else "not a folder (a file is there)"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot write there ({parent} is a file, not a folder)"
    return None


def unusable_dir(path: Path) -> str | None:
    """Create `path` if missing and write a probe file in it: why it cannot be used, or None."""
    if why := not_a_folder(path):
        return why
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def check_home(home: Path) -> Path:
    """The project folder (MICROSTRUCTURE_HOME / --home), created if missing and writable, or one
    SettingError line naming it and why (a file there, a read-only filesystem, no permission)."""
    home = Path(home)
    if why := unusable_dir(home):
        raise SettingError(f"MICROSTRUCTURE_HOME / --home {home}: {why}")
    return home


def check_home_shape(home: Path) -> Path:
    """The check every command runs first (cli.main), creating and writing nothing: the project
    folder is a folder or can become one. Commands that write there (the embedded server, spill
    files) also run check_home, with the same message."""
    home = Path(home)
    if why := not_a_folder(home):
        raise SettingError(f"MICROSTRUCTURE_HOME / --home {home}: {why}")
    return home
