"""Parquet export of the raw tables and the feature views, and the feature pull for walk-forward.

from microstructure.export import forward_returns, pull_features, walk_forward_folds
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Fold",
    "PullError",
    "WarmupError",
    "WarmupWarning",
    "forward_returns",
    "pull_features",
    "walk_forward_folds",
]


def __getattr__(name: str) -> Any:  # imported on first use: the CLI loads this package for every command
    if name in __all__:
        from microstructure.export import pull

        return getattr(pull, name)
    raise AttributeError(name)
