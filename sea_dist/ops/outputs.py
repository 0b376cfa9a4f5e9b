"""A run's outputs (docs/design.md, "Run outputs"), local or in object storage.

``metrics.jsonl`` grows by one line per epoch; ``summary.json`` and the embeddings are written
at the end by rank 0. Everything goes through fsspec, so ``--output-dir s3://...`` works.
Every write is one retried operation (:func:`sea_dist.storage.retry.with_retries`): a write that
failed on a transient storage fault is redone whole (object stores never show half a PUT).
"""
from __future__ import annotations

import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.ids import ids_to_arrow
from sea_dist.storage.retry import with_retries


def embedding_table(raw_ids: np.ndarray, embeddings: torch.Tensor, id_column: str) -> pa.Table:
    values = embeddings.detach().cpu().float().contiguous().numpy()
    dim = values.shape[1]
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.table(
        {
            id_column: ids_to_arrow(raw_ids),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )


class RunOutputs:
    def __init__(self, output_dir: str, s3_endpoint_url: str = ""):
        self.uri = output_dir
        self.fs, self.path = make_filesystem(output_dir, s3_endpoint_url)
        with_retries(lambda: self.fs.makedirs(self.path, exist_ok=True), f"creating {self.path}")
        self._metrics_lines: list[str] = []

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def write_text(self, name: str, text: str) -> str:
        path = self._join(name)
        parent = posixpath.dirname(path)

        def write() -> None:
            if parent:
                self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(path, "w") as f:
                f.write(text)

        with_retries(write, f"writing {path}")
        return path

    def write_bytes(self, name: str, data: bytes) -> str:
        path = self._join(name)
        parent = posixpath.dirname(path)

        def write() -> None:
            self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(path, "wb") as f:
                f.write(data)

        with_retries(write, f"writing {path}")
        return path

    def append_metrics(self, record: dict) -> None:
        """Rewrites the whole file: object stores have no append, and it is small."""
        self._metrics_lines.append(json.dumps(record, sort_keys=True))
        self.write_text("metrics.jsonl", "\n".join(self._metrics_lines) + "\n")

    def write_summary(self, summary: dict) -> str:
        return self.write_text("summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")

    def write_embeddings(
        self,
        kind: str,
        raw_ids: np.ndarray,
        embeddings: torch.Tensor,
        rows_per_shard: int = 1_000_000,
        name_prefix: str = "",
    ) -> list[str]:
        """``embeddings/<kind>/part-<name_prefix>NNNNN.parquet`` with the raw ids of the dataset
        (``name_prefix`` keeps the files of several writers, e.g. one per rank, apart)."""
        id_column = "user_id" if kind == "users" else "item_id"
        folder = self._join("embeddings", kind)
        with_retries(lambda: self.fs.makedirs(folder, exist_ok=True), f"creating {folder}")
        written = []
        for shard, start in enumerate(range(0, max(len(raw_ids), 1), rows_per_shard)):
            stop = start + rows_per_shard
            table = embedding_table(raw_ids[start:stop], embeddings[start:stop], id_column)
            path = posixpath.join(folder, f"part-{name_prefix}{shard:05d}.parquet")

            def write(path=path, table=table) -> None:
                with self.fs.open(path, "wb") as f:
                    pq.write_table(table, f, use_dictionary=False)

            with_retries(write, f"writing {path}")
            written.append(path)
        return written
