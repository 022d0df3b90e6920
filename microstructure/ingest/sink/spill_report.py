"""What waits in the spill folder (HOME/spill), read without a database and without a writer.

A writer that cannot reach the database writes batches to Arrow IPC files `{seq}-{kind}-{symbol}
[-fill].arrow` there (sink/writer.py); the next writer started on the same folder replays them, in
order, before anything new. Batches the database refused as data sit in `rejected/` and are not
replayed. `read_spill` lists both, so `status` can say what is not in the database yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from microstructure.ingest.records import GAP_KIND, KINDS, time_column

REJECTED = "rejected"


def spill_folder(home: Path | str) -> Path:
    """Where every writer of the project folder `home` spills (sink.writer.open_writer)."""
    return Path(home) / "spill"


@dataclass(frozen=True)
class SpilledBatch:
    path: Path
    kind: str
    table: str  # the database table it goes to
    symbol: str
    rows: int
    first_ms: int | None  # the rows' own times (exchange time; detection time for gap records)
    last_ms: int | None
    written_unix: float  # when the file was written (its mtime)


@dataclass
class SpillReport:
    folder: Path
    waiting: list[SpilledBatch] = field(default_factory=list)  # replayed by the next writer, in order
    rejected: list[SpilledBatch] = field(default_factory=list)  # refused by the database: not replayed
    unreadable: list[Path] = field(default_factory=list)  # a finished name, but not an Arrow file

    def by_table(self) -> dict[str, tuple[int, int]]:
        """table -> (batches, rows) of the waiting batches."""
        out: dict[str, tuple[int, int]] = {}
        for b in self.waiting:
            n, rows = out.get(b.table, (0, 0))
            out[b.table] = (n + 1, rows + b.rows)
        return dict(sorted(out.items()))

    def lines(self) -> list[str]:
        """What `status` prints about the folder: nothing waiting is one line too."""
        if not self.waiting:
            out = [f"spill files: none waiting in {self.folder}"]
        else:
            firsts = [b.first_ms for b in self.waiting if b.first_ms is not None]
            lasts = [b.last_ms for b in self.waiting if b.last_ms is not None]
            oldest = min(b.written_unix for b in self.waiting)
            out = [
                f"spill files: {len(self.waiting)} batches waiting in {self.folder}, NOT in the database yet; "
                "the next start of a collector (any `microstructure collect`) replays them first",
                "  tables: "
                + ", ".join(f"{t} {n} batches ({rows:,} rows)" for t, (n, rows) in self.by_table().items()),
            ]
            if firsts:
                out.append(
                    f"  time range of their rows: {_utc(min(firsts) / 1000)} .. {_utc(max(lasts) / 1000)}"
                )
            out.append(f"  oldest spilled at {_utc(oldest)}")
        if self.rejected:
            out.append(
                f"  {len(self.rejected)} batches refused by the database in {self.folder / REJECTED} "
                "(not replayed; the writer logged why)"
            )
        if self.unreadable:
            out.append(
                f"  {len(self.unreadable)} files that are not Arrow batches: {self.unreadable[0].name} ..."
            )
        return out


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seq(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def _read(path: Path) -> SpilledBatch:
    with pa.memory_map(str(path)) as source:
        reader = ipc.open_file(source)
        meta = reader.schema.metadata or {}
        table = reader.read_all()
    name_parts = path.name.split("-", 2)
    kind = meta.get(b"kind", b"").decode() or (name_parts[1] if len(name_parts) > 1 else "?")
    symbol = meta.get(b"symbol", b"").decode() or "?"
    col = time_column(kind)
    first = last = None
    if col in table.column_names and table.num_rows:
        first, last = pc.min(table.column(col)).as_py(), pc.max(table.column(col)).as_py()
    target = GAP_KIND if kind == GAP_KIND else KINDS[kind][0] if kind in KINDS else kind
    return SpilledBatch(path, kind, target, symbol, table.num_rows, first, last, path.stat().st_mtime)


def _scan(folder: Path, report: SpillReport) -> list[SpilledBatch]:
    out = []
    for path in sorted((p for p in folder.glob("*.arrow") if p.is_file()), key=_seq):
        try:
            out.append(_read(path))
        except (OSError, pa.ArrowInvalid):
            report.unreadable.append(path)
    return out


def read_spill(folder: Path) -> SpillReport:
    """The finished spill files of `folder` (a `.tmp` holds no batch: its write never completed)."""
    folder = Path(folder)
    report = SpillReport(folder)
    if folder.is_dir():
        report.waiting = _scan(folder, report)
        if (folder / REJECTED).is_dir():
            report.rejected = _scan(folder / REJECTED, report)
    return report


def count_spill_files(folder: Path, *, rejected: bool = True) -> int:
    """How many finished spill files `folder` holds (those in rejected/ too unless `rejected` is False),
    without reading them."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    return sum(
        1
        for p in folder.rglob("*.arrow")
        if p.is_file() and (rejected or p.relative_to(folder).parts[0] != REJECTED)
    )
