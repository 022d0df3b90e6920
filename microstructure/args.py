"""Checks of command-line arguments every command shares (symbols, days, integers, seconds): one
clear SettingError line naming the flag and what it expected."""

from __future__ import annotations

import re
from datetime import date

from microstructure.config import SettingError

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")


def parse_day(value: str, flag: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        raise SettingError(f"{flag}: expected YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise SettingError(f"{flag}: expected YYYY-MM-DD, got {value!r}") from None


def parse_day_range(start: str, end: str | None) -> tuple[date, date | None]:
    """--start and the optional --end (None when not given), the end on or after the start."""
    first = parse_day(start, "--start")
    last = parse_day(end, "--end") if end else None
    if last is not None and last < first:
        raise SettingError(f"--end: expected a day on or after --start {first}, got {end!r}")
    return first, last


def parse_int(value: str, flag: str, lo: int, hi: int | None = None) -> int:
    expected = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    try:
        n = int(str(value).strip())
    except ValueError:
        raise SettingError(f"{flag}: expected {expected}, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise SettingError(f"{flag}: expected {expected}, got {value!r}")
    return n


def parse_seconds(value: str, flag: str) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise SettingError(f"{flag}: expected a number of seconds > 0, got {value!r}") from None
    if not x > 0:
        raise SettingError(f"{flag}: expected a number of seconds > 0, got {value!r}")
    return x


def parse_symbols(values: list[str]) -> list[str]:
    out: list[str] = []
    for raw in values:
        for part in raw.split(","):
            sym = part.strip().upper()
            if not sym:
                continue
            if not SYMBOL_RE.fullmatch(sym):
                raise SettingError(f"--symbol: expected a contract name like BTCUSDT, got {part.strip()!r}")
            if sym not in out:
                out.append(sym)
    if not out:
        raise SettingError("--symbol: expected at least one contract name like BTCUSDT")
    return out
