"""The exported tree reads the same in pandas, pyarrow.dataset, DuckDB and polars: on a symbol folder
and on a whole type folder, with hive detection off (the files' columns) and on with `hour` declared
int32 (README "Parquet export"), the same columns, types and rows; no manifest inside the data folders."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from ex_helpers import SYMBOLS, run, write_hours

from microstructure.export.exporter import export_once
from microstructure.export.partitions import HOUR_TYPE, MANIFESTS


def _norm(schema: pa.Schema) -> dict[str, str]:
    out = {}
    for f in schema:
        t = f.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        out[f.name] = str(t)
    return out


def _readers(folder: Path, hive: bool) -> dict[str, pa.Table]:
    glob = f"{folder}/**/*.parquet"
    if hive:
        part = ds.partitioning(pa.schema([("hour", HOUR_TYPE)]), flavor="hive")
        return {
            "pandas": pa.Table.from_pandas(pd.read_parquet(folder, partitioning=part), preserve_index=False),
            "pyarrow": ds.dataset(folder, format="parquet", partitioning="hive").to_table(),
            "duckdb": duckdb.sql(
                f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, hive_types = {{'hour': INTEGER}})"
            ).fetch_arrow_table(),
            "polars": pl.read_parquet(
                folder, hive_partitioning=True, hive_schema={"hour": pl.Int32}
            ).to_arrow(),
        }
    return {
        "pandas": pa.Table.from_pandas(pd.read_parquet(folder, partitioning=None), preserve_index=False),
        "pyarrow": ds.dataset(folder, format="parquet").to_table(),
        "duckdb": duckdb.sql(
            f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
        ).fetch_arrow_table(),
        "polars": pl.read_parquet(folder, hive_partitioning=False).to_arrow(),
    }


@pytest.fixture
def tree(db_url: str, tmp_path: Path) -> Path:
    run(write_hours(db_url, hours=3, trades_per_hour=600))
    out = tmp_path / "data"
    export_once(db_url, out, types=["features_5m", "aggtrades", "book_depth_bands"])
    return out


def test_every_reader_sees_the_same_columns_types_and_rows(tree: Path) -> None:
    assert not [p for p in tree.rglob("*") if p.is_file() and p.suffix != ".parquet" and MANIFESTS not in p.parts
                and p.parent != tree]  # fmt: skip
    assert sorted((tree / MANIFESTS / "features_5m").rglob("*.json"))  # the manifests: beside the data
    for folder in (tree / "features_5m" / SYMBOLS[0], tree / "features_5m", tree / "aggtrades"):
        for hive in (False, True):
            tables = _readers(folder, hive)
            schemas = {k: _norm(t.schema) for k, t in tables.items()}
            first = schemas["pyarrow"]
            assert ("hour" in first) == hive and (not hive or first["hour"] == "int32"), (folder, first)
            for name, sch in schemas.items():
                assert sch == first, (folder, hive, name, sch, first)
            rows = {k: t.num_rows for k, t in tables.items()}
            assert len(set(rows.values())) == 1 and rows["pyarrow"] > 0, rows
            if hive:
                keys = ["symbol", "timestamp"]
                hours = {k: t.select([*keys, "hour"]).sort_by([(c, "ascending") for c in keys]).column("hour")
                         for k, t in tables.items()}  # fmt: skip
                for k, h in hours.items():
                    assert h.to_pylist() == hours["pyarrow"].to_pylist(), k
    # the plain calls no longer fail on a manifest: polars' folder read, pandas' default read
    assert pl.read_parquet(tree / "features_5m" / SYMBOLS[0]).height == len(
        pd.read_parquet(tree / "features_5m" / SYMBOLS[0])
    )
