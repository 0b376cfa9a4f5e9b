"""What the streaming synthetic generator makes (:class:`StreamSpec`), its checks and its keyed random streams.

Apart from the model (:mod:`sea_dist.sources.synthetic_stream`) and the writer
(:mod:`sea_dist.sources.stream_writer`) so that both, and the one synthetic CLI, share them
without importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sea_dist.sources.spec_checks import check_common_spec

__all__ = ["STREAM_GENERATOR_VERSION", "StreamSpec", "n_clusters", "check_stream_spec", "stream_rng"]

#: Bump whenever the output for a given spec changes (it is part of ``dataset.json``'s version).
STREAM_GENERATOR_VERSION = "2"

# purposes of the keyed random streams: default_rng([seed, purpose, index...])
RNG_ITEMS, RNG_USERS, RNG_FEATURE_MAP, RNG_FEATURE_NOISE = 0, 1, 2, 3


@dataclass
class StreamSpec:
    """What to generate. Equal specs give identical datasets."""

    n_users: int
    n_items: int
    n_interactions: int  # all splits together; the written total can differ slightly (recorded)
    modalities: dict = field(default_factory=lambda: {"image": 64, "text": 32})
    seed: int = 7
    name: str = "synthetic-catalog"
    users_per_chunk: int = 100_000  # one interactions/part file per chunk
    items_per_shard: int = 50_000  # one features/<m>/part file per shard
    row_group_size: int = 8192  # feature row groups: the unit of ranged reads
    feature_dtype: str = "float32"  # or "float16"
    # planted structure (as SyntheticSpec, whose default tier has 100 items per cluster)
    latent_dim: int = 16
    unique_dim: int = 8
    items_per_cluster: int = 100  # a larger catalogue has more clusters, not larger ones
    n_clusters: int = 0  # 0 = round(n_items / items_per_cluster), at least 1
    cluster_std: float = 0.6
    affinity_scale: float = 1.0
    unique_weight: float = 0.5
    popularity_std: float = 0.5
    count_sigma: float = 1.0
    min_per_user: int = 5
    feature_noise: float = 0.5
    # per-user interests
    n_interests: int = 5  # clusters a user draws from: its own and its favourites among the nearest
    cluster_neighbours: int = 8  # related clusters a user's other interests come from
    cluster_pool: int = 19  # ... the nearest of this many random others (see _related_clusters)
    explore_items: int = 32  # uniformly drawn items added to every user's candidates (the long tail)
    tail_items: int = 6000  # how many items those draws stand for (their weight; see tail_bonus)
    oversample: float = 2.0  # heavier users get more interest clusters: >= oversample * count items
    sparse_ids: bool = False  # raw ids 1000+3u / 10**6+7i instead of 0..n-1


def n_clusters(spec: StreamSpec) -> int:
    """Clusters of ``spec``: explicit, or one per ``items_per_cluster`` items."""
    if spec.n_clusters:
        return int(spec.n_clusters)
    return max(1, int(round(spec.n_items / spec.items_per_cluster)))


def check_stream_spec(spec: StreamSpec) -> None:
    check_common_spec(spec)
    if spec.feature_dtype not in ("float32", "float16"):
        raise ValueError(f"feature_dtype must be 'float32' or 'float16', got {spec.feature_dtype!r}")
    for key in ("users_per_chunk", "items_per_shard", "row_group_size", "items_per_cluster", "latent_dim",
                "unique_dim", "n_interests"):
        if getattr(spec, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(spec, key)}")
    for key in ("n_clusters", "cluster_neighbours", "cluster_pool", "explore_items", "tail_items"):
        if getattr(spec, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {getattr(spec, key)}")
    if spec.oversample < 1.0:
        raise ValueError(f"oversample must be >= 1, got {spec.oversample}")


def stream_rng(spec: StreamSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(spec.seed) & 0xFFFFFFFF, *key])
