"""Partitioned mode's per-rank checkpoint file: this rank's table shard beside rank 0's ``state.pt``.

Ray Train merges the workers' files into one checkpoint directory
(:mod:`sea_dist.train.checkpoint`); on resume each rank reads ``state.pt`` and its own shard,
and refuses a shard that belongs to another rank, world size, prepared version or report.
"""
from __future__ import annotations

import os

from sea_dist.train.checkpoint import save_rank_checkpoint
from sea_dist.runtime.distributed import WorkerContext


def checkpoint_stamp(progress: dict) -> list:
    """Which report a file belongs to: a shard must come from the same one as ``state.pt``."""
    partial = progress.get("partial_epoch") or {}
    return [progress["next_epoch"], partial.get("epoch", -1), partial.get("next_step", -1)]


def write_shard(
    directory: str, ctx: WorkerContext, prepared_version: str, progress: dict, tables: dict, best_tables: dict
) -> int:
    """Write ``rank-NNNNN.pt``; its size in bytes. ``progress`` is the trainer's, as a dict."""
    state = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "prepared_version": prepared_version,
        "stamp": checkpoint_stamp(progress),
        # this rank's own loss sums and timings of a half-done epoch (rank 0's are in state.pt)
        "partial_epoch": progress["partial_epoch"],
        "tables": tables,
        "best_tables": best_tables,
    }
    return os.path.getsize(save_rank_checkpoint(directory, ctx.rank, state))


def merge_shard(state: dict, ctx: WorkerContext, prepared_version: str) -> dict:
    """``state.pt`` with this rank's shard (``state["rank_state"]``) in place of the shared
    tables, best tables and half-done epoch; raises ``ValueError`` on a mismatched shard."""
    mine = state.get("rank_state")
    where = f"checkpoint for rank {ctx.rank}"
    if not mine:
        raise ValueError(f"{where}: no table shard (a partitioned run checkpoints one per rank)")
    if (mine["rank"], mine["world_size"]) != (ctx.rank, ctx.world_size):
        raise ValueError(
            f"{where}: the shard is rank {mine['rank']} of {mine['world_size']}, this worker is "
            f"rank {ctx.rank} of {ctx.world_size}"
        )
    if mine["prepared_version"] != prepared_version:
        raise ValueError(
            f"{where}: written for prepared version {mine['prepared_version']}, this run trains "
            f"{prepared_version} (other partitions, other table rows)"
        )
    if list(mine["stamp"]) != checkpoint_stamp(state["progress"]):
        raise ValueError(
            f"{where}: the shard and state.pt come from different reports (next epoch, epoch, "
            f"step: {list(mine['stamp'])} vs {checkpoint_stamp(state['progress'])}); "
            "a mixed-up checkpoint directory"
        )
    best = dict(state["best_state"], tables=mine["best_tables"]) if state["best_state"] else {}
    progress = dict(state["progress"], partial_epoch=mine["partial_epoch"])
    return dict(state, tables=mine["tables"], best_state=best, progress=progress)
