"""Counters of a feature store's reads (:class:`FetchStats`): what a fetch cost, for metrics and tests.

Kept apart from the store itself (:mod:`sea_dist.data.feature_store`) because the trainer's
metrics and the benchmarks read them without needing the store's machinery.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["FetchStats"]


@dataclass
class FetchStats:
    """Counters of one store since its last reset (``hits + misses == rows_served``).

    ``bytes_read``: compressed bytes of the column chunks read (from the footers' row-group
    metadata: what a ranged read moves); ``seconds``: wall time inside :meth:`FeatureStore.fetch`;
    ``row_groups_read``: row groups read from storage; ``row_groups_cached``: candidate row
    groups served from the cache; ``row_groups_skipped``: row groups ruled out by their
    statistics (summed over fetches); ``rows_served``: requested rows, duplicates included;
    ``cache_hits``/``cache_misses``: requested rows whose row group was / was not in the cache
    when the fetch reached it; ``retries``: row group reads retried after a transient storage
    fault (see the module docstring).
    """

    fetches: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    row_groups_read: int = 0
    row_groups_cached: int = 0
    row_groups_skipped: int = 0
    rows_served: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    retries: int = 0

    def snapshot(self) -> "FetchStats":
        """A copy of the counters now."""
        return replace(self)

    def reset(self) -> "FetchStats":
        """Zero the counters; returns what they were (a snapshot)."""
        before = self.snapshot()
        for k, v in asdict(FetchStats()).items():
            setattr(self, k, v)
        return before

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
