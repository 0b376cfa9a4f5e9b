#!/usr/bin/env python
"""Q's fit (CLUB) before and after issue 13, side by side on a default-dataset step; JSON lines.

Per world size (gloo ranks on loopback, one torch thread each, as Ray's one-CPU workers):

1. a sampled-mode Trainer on the bundled default dataset runs ``--steps`` steps with
   ``club_inner_steps = 0``: the step's cost without Q's fit (sampling, fetch, model), and
   the step's real (generic, unique) pairs, recorded on every rank;
2. on each recorded step, interleaved (the order alternates), from the same Q and Adam state:
   ``before``: autograd, one gradient all-reduce per inner step, this rank's rows
   (the pre-issue-13 path) and ``after``: :func:`fit_club_step` (rows gathered once, the fast
   local fit); ``--inner-steps`` (50, the reference's) inner steps each; with one rank also
   ``before`` at 2 threads (what a one-process run used: torch's default on this machine);
3. with ``--trainer``, also a Trainer run with the configured fit: summary.json's
   ``club_fit_s_per_epoch`` over ``train_s_per_epoch`` (whatever loop.py calls now).

Shares are fit / (step without fit + fit), in wall seconds (``*_share``; a step waits for
its slowest rank) and in the process's CPU seconds (``*_share_cpu``: what a quiet machine
would show, as long as the ranks have a core each). Load from other work moves absolute
seconds: compare the ratios of one run (both paths are timed in the same minute,
interleaved).

    python benchmarks/club_fit.py [--worlds 1,2] [--steps 6] [--inner-steps 50] [--trainer]
"""
from __future__ import annotations

import argparse
import copy
import os
import pickle
import statistics
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from _common import emit  # noqa: E402


def _timed(fn, barrier) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn`` after all ranks meet (so wall includes waiting on peers)."""
    barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _trainer(cfg_overrides: dict, ctx, output_dir: str):
    from sea_dist.config import Config
    from sea_dist.config_cli import apply_overrides
    from sea_dist.data.synthetic import default_dataset_root
    from sea_dist.train.loop import Trainer

    overrides = {
        "data.root": default_dataset_root(),
        "train.epochs": 1,
        "output.output_dir": output_dir,
        "output.write_embeddings": False,
        **cfg_overrides,
    }
    return Trainer(apply_overrides(Config(), overrides), ctx)


def _rank(rank: int, world: int, args: argparse.Namespace, out_dir: str) -> dict:
    import torch

    from sea_dist.model.club_fit import fit_club_reference, intra_op_threads
    from sea_dist.model.objective import fit_club_step
    from sea_dist.train.distributed import WorkerContext

    torch.set_num_threads(1)
    ctx = WorkerContext.from_process_group()
    common = {"train.max_steps_per_epoch": args.steps, "train.progress_every_s": 0}
    trainer = _trainer({**common, "model.club_inner_steps": 0}, ctx, os.path.join(out_dir, f"nofit{rank}"))
    club0 = copy.deepcopy(trainer.club)  # Q as the run starts: every timed fit starts here
    recorded, called_at, cpu_at = [], [], []
    original = trainer.club.fitting_pairs

    def recording(generic, unique):
        called_at.append(time.perf_counter())
        cpu_at.append(time.process_time())
        recorded.append(({m: t.detach().clone() for m, t in generic.items()},
                         {m: t.detach().clone() for m, t in unique.items()}))
        return original(generic, unique)

    trainer.club.fitting_pairs = recording
    trainer.fit()
    steps = len(recorded)
    # one step without the fit: from one step's pairs to the next one's (the first step,
    # with its one-time costs, is only the start of the first interval)
    intervals = [b - a for a, b in zip(called_at, called_at[1:])]
    cpu_intervals = [b - a for a, b in zip(cpu_at, cpu_at[1:])]
    result = {
        "steps": steps,
        "step_without_fit_s": statistics.median(intervals),
        "step_without_fit_cpu_s": statistics.median(cpu_intervals),
        "rows_per_worker": [int(next(iter(g.values())).shape[0]) for g, _ in recorded],
        "fits": {},
    }

    barrier = ctx.barrier
    variants = ["before", "after"] + (["before_2_threads"] if world == 1 else [])
    for index, (generic, unique) in enumerate(recorded):
        order = variants if index % 2 == 0 else variants[::-1]
        for name in order:
            club = copy.deepcopy(club0)
            opt = torch.optim.Adam(club.parameters(), lr=trainer.cfg.train.lr)
            if name == "after":
                run = lambda: fit_club_step(  # noqa: E731
                    club, generic, unique, opt, args.inner_steps, ctx if world > 1 else None
                )
            else:
                pairs = club.fitting_pairs(generic, unique)
                local = float(pairs[0][1].shape[0])
                total = float(ctx.all_reduce_sum(torch.tensor([local], dtype=torch.float64)))

                def run(pairs=pairs, club=club, opt=opt, local=local, total=total):
                    fit_club_reference(
                        pairs, opt, args.inner_steps, lambda: ctx.average_gradients(club, local, total)
                    )

            threads = 2 if name == "before_2_threads" else 1
            with intra_op_threads(threads):
                wall, cpu = _timed(run, barrier)
            result["fits"].setdefault(name, []).append((wall, cpu))
    if args.trainer:
        configured = _trainer(common, ctx, os.path.join(out_dir, f"fit{rank}")).fit()["throughput"]
        result["trainer"] = {
            "club_fit_s_per_step": configured["club_fit_s_per_epoch"] / steps,
            "train_s_per_step": configured["train_s_per_epoch"] / steps,
        }
    return result


def _entry(rank, world, init_file, out_dir, args):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = _rank(rank, world, args, out_dir)
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="sea_club_fit_") as tmp:
        mp.start_processes(
            _entry, args=(world, os.path.join(tmp, "rendezvous"), tmp, args), nprocs=world, start_method="spawn"
        )
        results = []
        for rank in range(world):
            with open(os.path.join(tmp, f"{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", default="1,2", help="world sizes to run, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="training steps recorded and fitted (>= 2)")
    p.add_argument("--inner-steps", type=int, default=50, help="Q's inner Adam steps per fit")
    p.add_argument("--trainer", action="store_true", help="also a Trainer run with the configured fit")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for world in (int(w) for w in args.worlds.split(",")):
        ranks = run_world(world, args)
        step_s = max(r["step_without_fit_s"] for r in ranks)  # a step waits for its slowest rank
        step_cpu_s = statistics.mean(r["step_without_fit_cpu_s"] for r in ranks)
        record = {
            "benchmark": "club_fit",
            "dataset": "default",
            "world_size": world,
            "inner_steps": args.inner_steps,
            "steps_timed": ranks[0]["steps"],
            "rows_per_worker_mean": statistics.mean(n for r in ranks for n in r["rows_per_worker"]),
            "step_without_fit_s": round(step_s, 4),
            "step_without_fit_cpu_s": round(step_cpu_s, 4),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        }
        for name in ranks[0]["fits"]:
            # per step: the slowest rank's wall time (the others wait for it at the next collective)
            walls = [max(r["fits"][name][i][0] for r in ranks) for i in range(ranks[0]["steps"])]
            cpus = [statistics.mean(r["fits"][name][i][1] for r in ranks) for i in range(ranks[0]["steps"])]
            fit_s = statistics.median(walls)
            record[f"{name}_fit_s"] = round(fit_s, 4)
            record[f"{name}_fit_cpu_s"] = round(statistics.median(cpus), 4)
            record[f"{name}_share"] = round(fit_s / (step_s + fit_s), 3)
            fit_cpu = record[f"{name}_fit_cpu_s"]
            record[f"{name}_share_cpu"] = round(fit_cpu / (step_cpu_s + fit_cpu), 3)
        record["speedup_wall"] = round(record["before_fit_s"] / record["after_fit_s"], 1)
        record["speedup_cpu"] = round(record["before_fit_cpu_s"] / record["after_fit_cpu_s"], 1)
        if "trainer" in ranks[0]:
            fit = max(r["trainer"]["club_fit_s_per_step"] for r in ranks)
            train = max(r["trainer"]["train_s_per_step"] for r in ranks)
            record["trainer_club_fit_s_per_step"] = round(fit, 4)
            record["trainer_train_s_per_step"] = round(train, 4)
            record["trainer_share"] = round(fit / train, 3)
        emit(record)


if __name__ == "__main__":
    main()
