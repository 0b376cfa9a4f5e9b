"""Checkpoint files: plain state dicts, loaded with ``weights_only=True``.

A checkpoint holds tensors, numbers, strings and lists/dicts of them only, so loading one
never unpickles arbitrary objects (a checkpoint in shared storage is untrusted input).

Layout of one checkpoint directory:

* ``state.pt``: what every rank shares (dense network, CLUB, optimizers, progress), written
  by rank 0;
* ``rank-NNNNN.pt`` (partitioned mode only): one rank's per-user table shard with its
  SparseAdam state. Every rank reports its own file and Ray Train merges the workers' files
  into one directory; on resume each rank reads ``state.pt`` and its own file only, never the
  other shards (at catalog size a shard is gigabytes).

Files are written to a local directory (Ray Train uploads it, through the filesystem
:func:`sea_dist.train.ray_run.storage_for` gives it, whose S3 client retries per request).
Reading a shard from storage is retried whole on transient storage faults; a missing file
or denied read fails at once.
"""
from __future__ import annotations

import os
import posixpath

import torch

from sea_dist.storage.retry import with_retries

CHECKPOINT_FILE = "state.pt"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def _save(path: str, state: dict) -> str:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated file
    return path


def save_checkpoint(directory: str, state: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    return _save(os.path.join(directory, CHECKPOINT_FILE), state)


def save_rank_checkpoint(directory: str, rank: int, state: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    return _save(os.path.join(directory, rank_file(rank)), state)


def load_checkpoint(directory: str, map_location="cpu") -> dict:
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory}")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_sharded_checkpoint(fs, path: str, rank: int, map_location="cpu") -> dict:
    """``state.pt`` plus this rank's shard as ``state["rank_state"]``, read through a
    ``pyarrow.fs`` filesystem (a Ray ``Checkpoint``'s ``filesystem``/``path``), one file each."""
    import pyarrow.fs as pafs

    def read(name: str) -> dict:
        where = posixpath.join(path, name)

        def load() -> dict:
            if fs.get_file_info(where).type != pafs.FileType.File:
                raise FileNotFoundError(f"no {name} in checkpoint directory {path}")
            with fs.open_input_file(where) as f:  # seekable: torch reads it without a full copy in memory
                return torch.load(f, map_location=map_location, weights_only=True)

        return with_retries(load, f"reading checkpoint {where}")

    state = read(CHECKPOINT_FILE)
    state["rank_state"] = read(rank_file(rank))
    return state
