"""The feature columns' documentation, read from docs/FEATURES.md (shipped in the package as
features_sql/FEATURES.md, a link to it): every table headed `| column | sources | rule | NULL rule |`
gives one row per view column. The view column comments come from here, and a test holds the set
of documented columns equal to the views' columns, so the document and the SQL cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

HEADER = ("column", "sources", "rule", "NULL rule")


@dataclass(frozen=True)
class ColumnDoc:
    group: str
    column: str
    sources: str
    rule: str
    null_rule: str

    def comment(self) -> str:
        """The column's COMMENT text."""
        return (
            f"{self.rule}. NULL: {self.null_rule}. Sources: {self.sources}. (docs/FEATURES.md, {self.group})"
        )


class FeatureDocError(ValueError):
    """docs/FEATURES.md has a table row that cannot be read."""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> dict[str, ColumnDoc]:
    """Every documented column, in the document's order."""
    out: dict[str, ColumnDoc] = {}
    group = ""
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            group, in_table = line[3:].strip(), False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if tuple(cells) == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        if len(cells) != len(HEADER):
            raise FeatureDocError(f"FEATURES.md line {n}: expected {len(HEADER)} cells, got {len(cells)}")
        name = cells[0].strip("`")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise FeatureDocError(f"FEATURES.md line {n}: {cells[0]!r} is not one column name")
        if name in out:
            raise FeatureDocError(f"FEATURES.md line {n}: column {name!r} documented twice")
        out[name] = ColumnDoc(group, name, cells[1], cells[2], cells[3])
    return out


@cache
def column_docs() -> dict[str, ColumnDoc]:
    return parse(resources.files("microstructure.features_sql").joinpath("FEATURES.md").read_text())


def comment_sql(view: str, columns: list[str] | tuple[str, ...]) -> list[str]:
    """COMMENT ON COLUMN statements for `view`'s documented `columns` (quotes doubled: the text is
    the project's own document, never user input)."""
    docs = column_docs()
    return [
        f"COMMENT ON COLUMN {view}.{c} IS '" + docs[c].comment().replace("'", "''") + "'"
        for c in columns
        if c in docs
    ]
