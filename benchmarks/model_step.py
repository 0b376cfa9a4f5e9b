#!/usr/bin/env python
"""Cost of one SEA training step on a sampled minibatch, CPU or GPU, without Ray, DGL or S3.

The per-edge cost that sizes a cluster (docs/scaling.md) is the model's: forward over the
sampled blocks, the losses, backward, CLUB's inner fitting steps and the optimizer steps. This
builds a minibatch with the shapes DGL sampling produces (``--batch`` triples, a kNN hop with
``--knn-fanout`` neighbours, two user-item hops with ``--fanouts``, node counts capped by the
catalog's) from seeded random structure, and times the step on ``--device``. Only plain-torch
model code is used, so it runs on a GPU machine that has torch and nothing else of the stack.

    python benchmarks/model_step.py --device cuda --batch 16384 --dims 4096,384 --club-steps 50
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.config import ModelConfig  # noqa: E402
from sea_dist.model.blocks import MiniBatch, Relation, UserItemHop  # noqa: E402
from sea_dist.model.objective import ClubEstimators, fit_club, sea_losses  # noqa: E402
from sea_dist.model.sea import SEA, UserTables  # noqa: E402


def relation(n_src: int, n_dst: int, fanout: int, gen: torch.Generator) -> Relation:
    dst = torch.arange(n_dst).repeat_interleave(fanout)
    src = torch.randint(0, n_src, (n_dst * fanout,), generator=gen)
    weight = torch.rand(n_dst * fanout, generator=gen) / fanout
    return Relation(src, dst, weight, n_dst)


def synthetic_batch(batch: int, fanouts: list[int], knn_fanout: int, n_users: int, n_items: int,
                    unique_share: float = 0.9, seed: int = 0) -> MiniBatch:
    """Node counts grow hop by hop as in DGL blocks (destinations are a prefix of sources);
    ``unique_share`` of the sampled neighbours are new nodes (the rest repeat: popular items
    and users recur across a batch), and counts never exceed the catalog's. Calibrate it with
    the ``mean_input_*_per_step`` a real run reports (benchmarks/scale.py)."""
    gen = torch.Generator().manual_seed(seed)
    grow = lambda n, extra, cap: min(cap, n + int(unique_share * extra))  # noqa: E731
    seed_users, seed_items = min(batch, n_users), min(2 * batch, n_items)
    frontier = grow(seed_items, seed_items * knn_fanout, n_items)
    knn = relation(frontier, seed_items, knn_fanout, gen)
    users, items = seed_users, frontier
    hops = []
    for f in reversed(fanouts):  # inner hop first while growing outwards
        new_users, new_items = grow(users, items * f, n_users), grow(items, users * f, n_items)
        hops.insert(0, UserItemHop(relation(new_users, items, f, gen), relation(new_items, users, f, gen)))
        users, items = new_users, new_items
    return MiniBatch(
        input_items=torch.arange(items),
        input_users=torch.arange(users),
        ui_hops=hops,
        knn_hops=[knn],
        seed_users=torch.arange(seed_users),
        seed_items=torch.arange(seed_items),
        batch_user=torch.randint(0, seed_users, (batch,), generator=gen),
        batch_pos=torch.randint(0, seed_items, (batch,), generator=gen),
        batch_neg=torch.randint(0, seed_items, (batch,), generator=gen),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8192, help="triples per worker step")
    ap.add_argument("--fanouts", default="10,10")
    ap.add_argument("--knn-fanout", type=int, default=10)
    ap.add_argument("--dims", default="4096,384", help="modality feature widths")
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--club-steps", type=int, default=50)
    ap.add_argument("--users", type=int, default=50_000_000)
    ap.add_argument("--items", type=int, default=5_000_000)
    ap.add_argument("--unique-share", type=float, default=0.9,
                    help="share of sampled neighbours that are new nodes (the rest repeat)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    dims = [int(d) for d in args.dims.split(",")]
    modalities = dict(zip(["image", "text", "audio"][: len(dims)], dims))
    cfg = ModelConfig(embedding_dim=args.embedding_dim, club_inner_steps=args.club_steps)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch, [int(f) for f in args.fanouts.split(",")], args.knn_fanout,
                            args.users, args.items, args.unique_share)
    n_in_users, n_in_items = batch.input_users.numel(), batch.input_items.numel()
    model = SEA(modalities, cfg).to(device)
    tables = UserTables(n_in_users, list(modalities), cfg.embedding_dim, sparse=True).to(device)
    club = ClubEstimators(list(modalities), cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    table_opt = torch.optim.SparseAdam(list(tables.parameters()), lr=1e-4)
    club_opt = torch.optim.Adam(club.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    feats = {m: torch.randn(n_in_items, d, generator=gen).abs().to(device) for m, d in modalities.items()}
    batch = batch.to(device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)  # noqa: E731
    times = {"forward_backward_s": 0.0, "club_fit_s": 0.0, "optimizer_s": 0.0}
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        out = model(batch, feats, tables)
        terms = sea_losses(model, club, out.pos_scores, out.neg_scores, out.views, cfg,
                           torch.Generator().manual_seed(step))
        opt.zero_grad(set_to_none=True)
        table_opt.zero_grad(set_to_none=True)
        terms.total.backward()
        sync()
        t1 = time.perf_counter()
        fit_club(club.fitting_pairs(terms.club_generic, terms.club_unique), club_opt, cfg.club_inner_steps, lambda: None)
        sync()
        t2 = time.perf_counter()
        opt.step()
        table_opt.step()
        sync()
        t3 = time.perf_counter()
        if step >= args.warmup:
            times["forward_backward_s"] += t1 - t0
            times["club_fit_s"] += t2 - t1
            times["optimizer_s"] += t3 - t2
    per_step = {k: v / args.steps for k, v in times.items()}
    step_s = sum(per_step.values())
    print(json.dumps({
        "benchmark": "model_step",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "batch": args.batch, "fanouts": args.fanouts, "knn_fanout": args.knn_fanout, "dims": dims,
        "embedding_dim": args.embedding_dim, "club_steps": args.club_steps,
        "input_users": n_in_users, "input_items": n_in_items,
        "step_s": round(step_s, 4), **{k: round(v, 4) for k, v in per_step.items()},
        "edges_per_s": round(args.batch / step_s, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
