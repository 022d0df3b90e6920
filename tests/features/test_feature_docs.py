"""docs/FEATURES.md documents exactly the views' columns (one row per column in the
`| column | sources | rule | NULL rule |` tables) and the views carry those rows as column comments."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from microstructure.features_sql.docs import FeatureDocError, column_docs, parse
from microstructure.features_sql.stages import FEATURE_COLUMNS, TIMEFRAMES, view_name

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("symbol", "bucket", "bucket_end")


def test_the_document_lists_every_view_column_once() -> None:
    docs = column_docs()
    assert set(docs) == {*KEYS, *FEATURE_COLUMNS}
    assert [c for c in docs if c not in KEYS] == list(FEATURE_COLUMNS)  # in the views' order
    assert {d.group for d in docs.values()} == {
        "Bar keys",
        "Trades",
        "Book",
        "Book depth bands",
        "Market",
        "Quality",
    }
    assert all(d.sources and d.rule and d.null_rule for d in docs.values())
    # the package's copy is the repository's document
    assert (ROOT / "microstructure/features_sql/FEATURES.md").read_text() == (
        ROOT / "docs/FEATURES.md"
    ).read_text()


def test_the_views_carry_the_documented_columns_and_comments(db_url: str) -> None:
    docs = column_docs()
    with psycopg.connect(db_url) as conn:
        for tf in TIMEFRAMES:
            rows = conn.execute(
                "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (view_name(tf),),
            ).fetchall()
            assert [r[0] for r in rows] == list(docs)
            for name, comment in rows:
                assert comment == docs[name].comment(), name
    # a column only live data can fill says so in its comment (issue 27)
    assert docs["funding_rate_predicted"].comment().startswith("live only")
    assert (
        "NULL: NULL without trades in the bar" in docs["vwap"].comment()
        or "volume 0" in docs["vwap"].comment()
    )


def test_a_malformed_row_is_named() -> None:
    head = "## G\n\n| column | sources | rule | NULL rule |\n| --- | --- | --- | --- |\n"
    assert parse(head + "| a | t | r | n |\n")["a"].group == "G"
    with pytest.raises(FeatureDocError, match="line 5: expected 4 cells"):
        parse(head + "| a | t | r |\n")
    with pytest.raises(FeatureDocError, match="documented twice"):
        parse(head + "| a | t | r | n |\n| a | t | r | n |\n")
    with pytest.raises(FeatureDocError, match="not one column name"):
        parse(head + "| a, b | t | r | n |\n")
    assert parse("| column | meaning |\n| --- | --- |\n| x | y |\n") == {}  # other tables are prose


def test_the_readme_links_the_repository_document() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/FEATURES.md" in readme and "../shared" not in readme
