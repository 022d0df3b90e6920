"""Fixtures of the feature tests: a fresh PGlite TimescaleDB schema per test that asks for one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from microstructure.db import migrate


@pytest.fixture
def pglite_db(pglite_url: str) -> Iterator[str]:
    """PGlite TimescaleDB (continuous aggregates) with the schema at head, emptied after the test."""
    migrate.downgrade(pglite_url)
    migrate.upgrade(pglite_url)
    try:
        yield pglite_url
    finally:
        migrate.downgrade(pglite_url)
