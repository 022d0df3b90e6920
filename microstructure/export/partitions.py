"""The Parquet tree on disk: where an hour's file lives, how it is written (atomically, fsynced,
byte-identical for the same rows) and the per-day manifest of what each file holds.

    <output-dir>/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>/hour=<HH>/data.parquet
    <output-dir>/_manifests/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>.json  {"hours": {"HH": {rows, min_time,
                                                                     max_time, sha256, bytes}}, ...}

The manifests live outside the data folders, so a folder read of a type or a symbol (pandas,
pyarrow.dataset, DuckDB, polars) meets Parquet files only. The files hold no `hour` column: the
folder name is the only place it is, and a reader that detects hive partitions adds it. Readers
infer different types from `hour=05` (pyarrow int32, polars Int64, pandas a categorical, DuckDB
VARCHAR), so the documented reads either turn hive detection off (every reader: the files' columns
only) or declare `hour` as HOUR_TYPE (int32) (README "Parquet export" shows the four calls).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFESTS = "_manifests"  # under the output folder, beside the type folders
DATA = "data.parquet"
HOUR_TYPE = pa.int32()  # the type every documented hive read gives the `hour` folder key
MANIFEST_VERSION = 1


def day_dir(root: Path, type_name: str, symbol: str, hour: datetime) -> Path:
    return root / type_name / symbol / f"{hour:%Y}" / f"{hour:%m}" / f"{hour:%d}"


def manifest_path(day_folder: Path) -> Path:
    """Where the manifest of a data day folder (<root>/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>) lives:
    <root>/_manifests/<type>/<SYMBOL>/<YYYY>/<MM>/<DD>.json."""
    root = day_folder.parents[4]
    rel = day_folder.relative_to(root)
    return root / MANIFESTS / rel.parent / f"{rel.name}.json"


def hour_path(root: Path, type_name: str, symbol: str, hour: datetime) -> Path:
    return day_dir(root, type_name, symbol, hour) / f"hour={hour:%H}" / DATA


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """The file's bytes: the same rows give the same bytes (no timestamps or paths are written)."""
    # Arrow's own in-memory sink: a Python BytesIO costs a call under the GIL per page written and
    # made the encoding twice as slow as a write to a file (BENCHMARKS.md, "Parquet export")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, row_group_size=1 << 20, write_statistics=True)
    return sink.getvalue().to_pybytes()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name beside `path`, fsync, rename over it, fsync the folder: a reader or a
    crash sees the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed export left in `folder` (never a finished file)."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


@dataclass
class Manifest:
    """What the files of one (type, symbol, UTC day) hold, keyed by hour 'HH'."""

    path: Path
    hours: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The manifest of the data day folder `folder` (see manifest_path)."""
        path = manifest_path(folder)
        try:
            data = json.loads(path.read_text())
            hours = dict(data.get("hours", {}))
        except (OSError, ValueError):
            hours = {}
        return cls(path, hours)

    def save(self) -> None:
        body = {"version": MANIFEST_VERSION, "hours": dict(sorted(self.hours.items()))}
        write_atomically(self.path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def file_entry(data: bytes, table: pa.Table) -> dict[str, Any]:
    times = table.column("timestamp")
    return {
        "rows": table.num_rows,
        "min_time": _iso(pa.compute.min(times).as_py()),
        "max_time": _iso(pa.compute.max(times).as_py()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
