"""The one local folder sea_dist keeps generated things in (datasets, compiled kernels).

Its own module so that model code and data sources can share it without importing each other.
"""
from __future__ import annotations

import os


def cache_dir() -> str:
    """``$SEA_DIST_CACHE`` or ``~/.cache/sea_dist``: regenerable content only, safe to delete."""
    return os.environ.get("SEA_DIST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sea_dist")
