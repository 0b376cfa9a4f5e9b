"""Run a function in N CPU processes joined by a gloo process group (no Ray).

Fast, deterministic tests of the distributed logic (TorchRec's pattern); Ray itself is
exercised by the few end-to-end tests.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world_size, init_file, out_dir, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException:  # noqa: BLE001 - the parent re-raises with the traceback
        payload = ("error", traceback.format_exc())
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(payload, f)
    try:
        if payload[0] == "ok":
            dist.barrier()  # no rank tears its sockets down while a peer still talks to it
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a failed peer closed the group; the results are written
        pass
    # Skip interpreter finalisation: gloo's worker threads sometimes outlive it and abort the
    # process at exit ("terminate called without an active exception", seen under CI load)
    # after the result above is already written.
    os._exit(0)


def run_distributed(fn, world_size: int = 2, *args):
    """Returns each rank's return value (rank order); raises if any rank failed."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        mp.start_processes(
            _entry, args=(world_size, init_file, tmp, fn, args), nprocs=world_size, start_method="spawn"
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(tmp, f"{rank}.pkl"), "rb") as f:
                status, value = pickle.load(f)
            if status != "ok":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results.append(value)
        return results
