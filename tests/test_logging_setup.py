"""The log line format: one line per event, an exception as its type and message unless -vv."""

from __future__ import annotations

import json
import logging

from microstructure.logging_setup import KeyValueFormatter


def _record_with_exception() -> logging.LogRecord:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        import sys

        return logging.LogRecord(
            "asyncpg.pool", logging.WARNING, __file__, 1, "Failed to restore the pool connection floor; retrying",
            None, sys.exc_info(),
        )  # fmt: skip


def test_an_exception_is_one_field_of_one_line_and_its_traceback_only_when_asked() -> None:
    record = _record_with_exception()
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "Traceback" not in line
    assert line.endswith(
        "exc=\"ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)\""
    )
    assert "logger=asyncpg.pool level=warning" not in line and "level=warning logger=asyncpg.pool" in line
    fields = json.loads(KeyValueFormatter(as_json=True).format(record))
    assert fields["exc"] == "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    full = json.loads(KeyValueFormatter(as_json=True, tracebacks=True).format(record))["exc"]
    assert full.startswith("Traceback (most recent call last):") and "_record_with_exception" in full
