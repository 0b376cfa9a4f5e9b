"""Partitioned mode's entries in the run summary: per-worker memory, reads, traffic and blocks."""
from __future__ import annotations

import torch

from sea_dist.ops.redact import redact_uri


def dataset_summary(manifest: dict, root: str, modality_dims: dict[str, int]) -> dict:
    dataset = manifest["dataset"]
    return {
        "name": dataset["name"],
        "version": dataset["version"],
        "root": redact_uri(root),
        "prepared": manifest["version"],
        "n_users": int(dataset["n_users"]),
        "n_items": int(dataset["n_items"]),
        "n_train": int(dataset["n_train"]),
        "modalities": modality_dims,
    }


def partition_summary(source, steps: int, epochs: int) -> dict:
    """A collective: every rank's figures, gathered (``source`` is a ``PartitionedSource``)."""
    ctx = source.ctx
    steps, epochs = max(steps, 1), max(epochs, 1)
    traffic = source.table_traffic.as_dict()
    traffic_rows = ctx.all_gather_rows(torch.tensor([[float(v) for v in traffic.values()]], dtype=torch.float64))
    fetch = [s.stats for s in source.stores.values()]
    blocks = source.block_sizes
    mine = [
        source.partition_bytes / 1e6,
        float(source.table_rows()),
        source.table_bytes() / 1e6,
        float(source.part.loaded_bytes),
        float(sum(f.bytes_read for f in fetch)),
        float(sum(f.seconds for f in fetch)),
        float(sum(f.rows_served for f in fetch)),
        float(sum(f.cache_hits for f in fetch)),
        *(blocks[1:] / max(int(blocks[0]), 1)).tolist(),
    ]
    per_worker = ctx.all_gather_rows(torch.tensor([mine], dtype=torch.float64))
    column = lambda i: [round(float(v), 3) for v in per_worker[:, i]]  # noqa: E731
    return {
        "user_tables": source.cfg.train.user_tables,
        "graph_mb_per_worker": column(0),
        "user_table_rows_per_worker": [int(v) for v in per_worker[:, 1]],
        "user_table_mb_per_worker": column(2),
        "partition_bytes_read_per_worker": [int(v) for v in per_worker[:, 3]],
        "feature_bytes_read_per_epoch_per_worker": [round(float(v) / epochs) for v in per_worker[:, 4]],
        "feature_fetch_s_per_worker": column(5),
        "feature_cache_hit_ratio_per_worker": [
            round(float(h) / float(n), 4) if n else 1.0 for h, n in zip(per_worker[:, 7], per_worker[:, 6])
        ],
        "mean_input_users_per_step_per_worker": column(8),
        "mean_input_items_per_step_per_worker": column(9),
        "mean_block_edges_per_step_per_worker": column(10),
        # the last evaluation's halo exchanges (exact inference: one per layer)
        "inference_exchange_rank0": source.inference_exchange,
        "table_traffic_per_step_per_worker": {
            name: [round(float(v) / steps, 1) for v in traffic_rows[:, i]] for i, name in enumerate(traffic)
        },
    }
