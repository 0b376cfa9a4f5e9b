#!/usr/bin/env python
"""Q's fit (CLUB) before and after issue 13, side by side on a default-dataset step; JSON lines.

Per world size (gloo ranks on loopback, one torch thread each, as Ray's one-CPU workers), a
sampled-mode Trainer on the bundled default dataset runs ``--steps`` steps with
``club_inner_steps = 0`` (the step without Q's fit: sampling, fetch, model); inside each step,
where the fit runs, the step's real (generic, unique) pairs are fitted by each variant from
the same Q and a fresh Adam (the order alternates between steps), so fits and steps are
timed in the same seconds:

- ``before``: autograd, one gradient all-reduce per inner step, this rank's rows (the path
  before issue 13); with one rank also ``before_2_threads`` (what a one-process run used:
  torch's default thread count on this machine) and ``after_2_threads`` (the new fit
  without its scoped single thread) on the first ``--two-thread-steps`` steps;
- ``after``: :func:`fit_club_step` (rows gathered once, identical rows merged, the fast
  local fit on one thread, each inner step's gradient by the compiled kernel where it
  builds: the record's ``kernel``); ``after_torch_ops`` the same with ``kernel="torch"``
  (the hand-written torch form the kernel replaced); with several ranks also
  ``after_shared`` (``share_rows=True``: each rank fits a share of the merged rows,
  gradients summed at every inner step).

``--inner-steps`` (50, the reference's) inner steps each. With ``--trainer``, also two
Trainer runs, ``trainer_before`` (loop.py's ``fit_club_step`` swapped for the pre-issue-13 fit)
``trainer_after_torch_ops`` (``train.club_kernel=torch``) and ``trainer_after`` (the fit
loop.py calls, with the default kernel): summary.json's ``club_fit_s_per_epoch`` over
``train_s_per_epoch``.

Shares are fit / (step without fit + fit), in wall seconds (``*_share``; a step waits for
its slowest rank) and in the process's CPU seconds (``*_share_cpu``: what a quiet machine
would show, as long as the ranks have a core each). Load from other work moves absolute
seconds: compare the ratios of one run (both paths are timed in the same minute,
interleaved).

    python benchmarks/club_fit.py [--worlds 1,2] [--steps 8] [--inner-steps 50] [--trainer]
    python benchmarks/club_fit.py --worlds 1 --full-graph [--trainer]
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
    from sea_dist.config import apply_overrides
    from sea_dist.sources.synthetic import default_dataset_root
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

    from sea_dist.model.club_fit import fit_club, fit_club_reference, intra_op_threads
    from sea_dist.model.objective import fit_club_step
    from sea_dist.runtime.distributed import WorkerContext

    if args.full_graph:
        torch.set_num_threads(os.cpu_count() or 1)  # a one-process run keeps torch's default
    else:
        torch.set_num_threads(1)
    ctx = WorkerContext.from_process_group()
    common = {
        "train.max_steps_per_epoch": args.steps,
        "train.progress_every_s": 0,
        "train.full_graph": args.full_graph,
    }
    trainer = _trainer({**common, "model.club_inner_steps": 0}, ctx, os.path.join(out_dir, f"nofit{rank}"))
    club0 = copy.deepcopy(trainer.club)  # Q as the run starts: every timed fit starts here
    lr = trainer.cfg.train.lr
    fits: dict[str, list[tuple[float, float]]] = {}
    marks: list[tuple[float, float, float, float]] = []  # (wall in, cpu in, wall out, cpu out)
    rows: list[int] = []

    def fit_variants(generic, unique, index):
        """Time each variant on this step's pairs, from the same Q and a fresh Adam."""
        variants = ["before", "after_torch_ops", "after"] + (["after_shared"] if world > 1 else [])
        if world == 1 and index < args.two_thread_steps:
            variants += ["before_2_threads", "after_2_threads"]
        for name in variants if index % 2 == 0 else variants[::-1]:
            club = copy.deepcopy(club0)
            opt = torch.optim.Adam(club.parameters(), lr=lr)
            if name == "after_2_threads":  # the fast fit without its scoped single thread
                def run(club=club, opt=opt):
                    fit_club(club.fitting_pairs(generic, unique), opt, args.inner_steps, threads=None)
            elif name.startswith("after"):
                def run(club=club, opt=opt, share=name == "after_shared", ops=name == "after_torch_ops"):
                    fit_club_step(
                        club, generic, unique, opt, args.inner_steps, ctx if world > 1 else None,
                        share_rows=share, kernel="torch" if ops else "auto",
                    )
            else:
                pairs = club.fitting_pairs(generic, unique)
                local = float(pairs[0][1].shape[0])
                total = float(ctx.all_reduce_sum(torch.tensor([local], dtype=torch.float64)))

                def run(pairs=pairs, club=club, opt=opt, local=local, total=total):
                    fit_club_reference(
                        pairs, opt, args.inner_steps, lambda: ctx.average_gradients(club, local, total)
                    )

            with intra_op_threads(2 if name.endswith("_2_threads") else 1):
                fits.setdefault(name, []).append(_timed(run, ctx.barrier))

    original = trainer.club.fitting_pairs

    def timing_hook(generic, unique):
        """Runs inside each training step, where the fit runs: fits timed in the same
        seconds as the step around them."""
        wall_in, cpu_in = time.perf_counter(), time.process_time()
        generic = {m: t.detach() for m, t in generic.items()}
        unique = {m: t.detach() for m, t in unique.items()}
        rows.append(int(next(iter(generic.values())).shape[0]))
        fit_variants(generic, unique, len(rows) - 1)
        marks.append((wall_in, cpu_in, time.perf_counter(), time.process_time()))
        return original(generic, unique)

    trainer.club.fitting_pairs = timing_hook
    trainer.fit()
    # a step without the fit: from leaving one step's hook to entering the next one's (the
    # first step, with its one-time costs, only ends the first interval)
    walls = [b[0] - a[2] for a, b in zip(marks, marks[1:])]
    cpus = [b[1] - a[3] for a, b in zip(marks, marks[1:])]
    from sea_dist.model.club_native import club_kernel

    cfg = trainer.cfg.model
    result = {
        "kernel": "native" if club_kernel(cfg.club_dim, cfg.club_hidden, cfg.club_dim) else "torch",
        "steps": len(rows),
        "step_without_fit_s": walls,
        "step_without_fit_cpu_s": cpus,
        "rows_per_worker": rows,
        "fits": fits,
    }
    if args.trainer:
        import sea_dist.train.loop as loop

        configured = loop.fit_club_step
        result["trainer"] = {}
        for name in ("before", "after_torch_ops", "after"):  # the pre-issue-13 fit, then the loop's own
            loop.fit_club_step = configured if name.startswith("after") else _fit_club_step_before
            overrides = {**common, "train.club_kernel": "torch" if name == "after_torch_ops" else "auto"}
            try:
                t = _trainer(overrides, ctx, os.path.join(out_dir, f"{name}{rank}")).fit()["throughput"]
            finally:
                loop.fit_club_step = configured
            result["trainer"][name] = (t["club_fit_s_per_epoch"], t["train_s_per_epoch"])
    return result


def _fit_club_step_before(club, generic, unique, optimizer, steps, workers=None, **_):
    """The training step's Q fit before issue 13: autograd on this worker's rows, gradients
    averaged over workers by row count at every inner step."""
    import torch

    from sea_dist.model.club_fit import fit_club_reference

    pairs = club.fitting_pairs(generic, unique)
    if steps <= 0:
        return 0.0
    if workers is None:
        return fit_club_reference(pairs, optimizer, steps)
    local = float(pairs[0][1].shape[0])
    total = float(workers.all_reduce_sum(torch.tensor([local], dtype=torch.float64)))
    return fit_club_reference(pairs, optimizer, steps, lambda: workers.average_gradients(club, local, total))


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
    p.add_argument(
        "--two-thread-steps", type=int, default=2,
        help="with one rank, steps on which the old fit is also timed at 2 threads (slow under load)",
    )
    p.add_argument(
        "--full-graph", action="store_true",
        help="the full-graph mode instead (one process, torch's default threads; use --worlds 1)",
    )
    args = p.parse_args()
    if args.full_graph and args.worlds != "1":
        p.error("--full-graph runs in one process: --worlds 1")
    if not args.full_graph:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    for world in (int(w) for w in args.worlds.split(",")):
        ranks = run_world(world, args)
        steps = ranks[0]["steps"]
        # a step waits for its slowest rank: per step the slowest rank's wall seconds, the
        # ranks' mean CPU seconds; then the median over steps
        step_s = statistics.median(max(r["step_without_fit_s"][i] for r in ranks) for i in range(steps - 1))
        step_cpu_s = statistics.median(
            statistics.mean(r["step_without_fit_cpu_s"][i] for r in ranks) for i in range(steps - 1)
        )
        record = {
            "benchmark": "club_fit",
            "dataset": "default",
            "mode": "full_graph" if args.full_graph else "sampled",
            "world_size": world,
            "inner_steps": args.inner_steps,
            "steps_timed": steps,
            "kernel": ranks[0]["kernel"],
            "rows_per_worker_mean": statistics.mean(n for r in ranks for n in r["rows_per_worker"]),
            "step_without_fit_s": round(step_s, 4),
            "step_without_fit_cpu_s": round(step_cpu_s, 4),
            "load_avg_1m": round(os.getloadavg()[0], 1),
        }
        for name, timed in ranks[0]["fits"].items():
            n = len(timed)
            fit_s = statistics.median(max(r["fits"][name][i][0] for r in ranks) for i in range(n))
            fit_cpu = statistics.median(statistics.mean(r["fits"][name][i][1] for r in ranks) for i in range(n))
            record[f"{name}_fit_s"] = round(fit_s, 4)
            record[f"{name}_fit_cpu_s"] = round(fit_cpu, 4)
            record[f"{name}_share"] = round(fit_s / (step_s + fit_s), 3)
            record[f"{name}_share_cpu"] = round(fit_cpu / (step_cpu_s + fit_cpu), 3)
        record["speedup_wall"] = round(record["before_fit_s"] / record["after_fit_s"], 1)
        record["speedup_cpu"] = round(record["before_fit_cpu_s"] / record["after_fit_cpu_s"], 1)
        record["kernel_speedup_cpu"] = round(record["after_torch_ops_fit_cpu_s"] / record["after_fit_cpu_s"], 2)
        for name in ranks[0].get("trainer", {}):
            fit = max(r["trainer"][name][0] for r in ranks) / steps
            train = max(r["trainer"][name][1] for r in ranks) / steps
            record[f"trainer_{name}_club_fit_s_per_step"] = round(fit, 4)
            record[f"trainer_{name}_train_s_per_step"] = round(train, 4)
            record[f"trainer_{name}_share"] = round(fit / train, 3)
        emit(record)


if __name__ == "__main__":
    main()
