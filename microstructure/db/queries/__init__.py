"""Named SQL queries kept as .sql files beside this module."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """The text of `<name>.sql` in this package."""
    return resources.files(__package__).joinpath(f"{name}.sql").read_text()
