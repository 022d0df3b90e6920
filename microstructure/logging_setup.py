"""Structured, quiet-by-default logs: one line per event, `key=value` pairs or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """`2026-11-25T01:02:03.456Z level=info logger=... msg="..." key=value`; extras become pairs.
    An exception a record carries is `exc="<type>: <message>"`, its whole traceback only with
    `tracebacks` (-vv): e.g. asyncpg's pool logs its failed reconnects with one each, every second
    of a database outage."""

    def __init__(self, as_json: bool = False, tracebacks: bool = False) -> None:
        super().__init__()
        self.as_json = as_json
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields: dict[str, object] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["exc"] = (
                self.formatException(record.exc_info) if self.tracebacks else f"{type(exc).__name__}: {exc}"
            )
        if self.as_json:
            return json.dumps(fields, default=str)
        parts = [ts]
        for key, value in fields.items():
            if key == "ts":
                continue
            text = str(value)
            if key in ("msg", "exc") or " " in text or "=" in text or not text:
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def configure(verbosity: int = 0, as_json: bool = False) -> None:
    """0: warnings only; 1: info; 2+: debug. Third-party libraries stay at warning below -vvv."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(as_json, tracebacks=verbosity >= 2))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if verbosity < 3 else logging.DEBUG)
    logging.getLogger("microstructure").setLevel(level)
    # a long load's heartbeat (ingest/collectors/progress.py) shows at the default level too
    logging.getLogger("microstructure.progress").setLevel(min(level, logging.INFO))
