#!/usr/bin/env python
"""The dense feature part of a data-parallel step, with the folded weight products computed
whole on every rank vs shared out over the ranks (``train.share_weight_products``).

What is timed, per rank, each step: every modality branch's GCN input and auxiliary views
(the folded ``out x d x d`` products and the ``n x d x out`` row products), a scalar loss,
backward, and DDP's gradient all-reduce, on ``--rows`` item rows per rank (a step's input items).
Both variants run in the same invocation, alternating step by step, on ``--world`` gloo ranks
of one thread each; JSON lines give seconds per step of each and their ratio.

    python benchmarks/weight_products.py --world 2 --dims 4096,384 --rows 1500 --steps 6
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.config import ModelConfig  # noqa: E402
from sea_dist.model.sea import SEA  # noqa: E402
from sea_dist.runtime.sharded_product import ShardedProduct  # noqa: E402


class _DenseStep(torch.nn.Module):
    """The feature part of a step as one module, so DDP's forward and gradient hooks see it."""

    def __init__(self, model: SEA):
        super().__init__()
        self.model = model

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for m, rows in features.items():
            branch = self.model.branches[m]
            generic, unique, projected = branch.auxiliary(rows)
            total = total + branch.gcn_input(rows).square().mean() + generic.mean() + unique.mean()
            if projected is not None:
                total = total + projected.mean()
        return total


def _rank(rank: int, world: int, init_file: str, args: argparse.Namespace, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dims = {name: int(d) for name, d in zip(("image", "text", "audio"), args.dims.split(","))}
    torch.manual_seed(0)
    model = SEA(dims, ModelConfig(embedding_dim=args.embedding_dim))
    ddp = torch.nn.parallel.DistributedDataParallel(_DenseStep(model))
    product = ShardedProduct(dist.new_group())
    gen = torch.Generator().manual_seed(rank)
    features = {m: torch.randn(args.rows, d, generator=gen) for m, d in dims.items()}
    times: dict[str, list[float]] = {"whole": [], "shared": []}
    for i in range(args.steps + 1):  # step 0 of each: warm-up, not counted
        for variant in ("whole", "shared"):
            model.share_weight_products(product if variant == "shared" else None)
            dist.barrier()
            t0 = time.perf_counter()
            ddp.zero_grad(set_to_none=True)
            ddp(features).backward()
            dist.barrier()
            if i:
                times[variant].append(time.perf_counter() - t0)
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(times, f)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--dims", default="4096,384", help="modality widths (MMRec's: image 4096, text 384)")
    ap.add_argument("--rows", type=int, default=1500, help="item rows per rank and step")
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(args.world, os.path.join(tmp, "init"), args, tmp), nprocs=args.world,
                           start_method="spawn")
        ranks = []
        for r in range(args.world):
            with open(os.path.join(tmp, f"{r}.json")) as f:
                ranks.append(json.load(f))
    per_step = {v: max(sum(t[v]) / len(t[v]) for t in ranks) for v in ("whole", "shared")}
    print(json.dumps({
        "benchmark": "weight_products", "world": args.world, "dims": args.dims, "rows_per_rank": args.rows,
        "embedding_dim": args.embedding_dim, "steps": args.steps, "threads_per_rank": 1,
        "s_per_step_whole": round(per_step["whole"], 4), "s_per_step_shared": round(per_step["shared"], 4),
        "shared_over_whole": round(per_step["shared"] / per_step["whole"], 3),
    }, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
