"""The per-worker training loop: read this top to bottom to follow a run.

    setup (source: data -> graph; model; tables) -> for each epoch: plan triples -> steps ->
    validate -> checkpoint/report -> early stop -> final outputs

One loop serves every mode; what a mode changes is its batch source
(:mod:`sea_dist.train.sources`): full graph (one process, the reference's exact forward over
the whole graph every step), replicated sampled (DGL-sampled steps, DDP, replicated sparse user
tables) and partitioned (one partition per worker, sharded tables). The source plans each epoch,
prepares each step's inputs, reads and updates the user tables and computes the evaluation and
export embeddings; this module owns the network, CLUB's Q, their optimizers and the progress
record. Everything distributed goes through :class:`~sea_dist.runtime.distributed.WorkerContext`.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import asdict

import torch

from sea_dist.config import Config
from sea_dist.config import config_to_dict
from sea_dist.data.dataset import Dataset
from sea_dist.graph.dgl_compat import dgl
from sea_dist.model.objective import ClubEstimators, LossTerms, fit_club_step, sea_losses
from sea_dist.model.sea import SEA
from sea_dist.ops.metrics import TrainingMetrics
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.publish import config_fingerprint
from sea_dist.ops.redact import redact_config, redact_uri
from sea_dist.ops.report import render_report
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.checkpoint import save_checkpoint
from sea_dist.train.early_stopping import early_stopping
from sea_dist.train.lr_schedule import lr_at, scaled_lr, set_lr
from sea_dist.train.prefetch import InputThread, Prefetcher
from sea_dist.train.progress import StepProgress
from sea_dist.train.run_records import LOSS_TERMS, EpochTimes, Progress, epoch_line, epoch_record, throughput
from sea_dist.train.sources import make_source
from sea_dist.train.sources.base import StepInputs, peak_rss_mb
from sea_dist.train.warm_start import MODEL_FILE, find_published, published_model_bytes

log = logging.getLogger(__name__)

class Trainer:
    """One worker's training run; what depends on the mode is its :attr:`source`."""

    def __init__(
        self,
        cfg: Config,
        ctx: WorkerContext,
        dataset: Dataset | None = None,
        resume_state: dict | None = None,
        metrics: TrainingMetrics | None = None,
    ):
        self.cfg, self.ctx = cfg, ctx
        self.metrics = metrics
        self.device = ctx.device
        torch.manual_seed(cfg.train.seed)  # identical initial parameters on every rank
        self.input_thread = InputThread.shared()  # every step's sampling and fetching happen there

        self.source = make_source(cfg, ctx, dataset)  # graph, features, negatives, evaluator
        evaluator = self.source.evaluator
        if ctx.is_main and any(evaluator.skipped_users.values()):
            log.warning(
                "not evaluated (no training interactions, MMRec convention): %d validation and "
                "%d test users",
                evaluator.skipped_users["valid"],
                evaluator.skipped_users["test"],
            )

        # model: dense network, per-user tables, CLUB's Q — three optimizers, as in docs/model.md ("Optimisation")
        self.model = SEA(self.source.modality_dims, cfg.model).to(self.device)
        if not self.model.alignment and ctx.is_main:
            log.warning(
                "one modality (%s): SEA's alignment (Solosim) term is off; separation and BPR remain",
                ", ".join(self.model.modalities),
            )
        self.tables = self.source.make_tables(self.model.modalities)
        self.club = ClubEstimators(self.model.modalities, cfg.model).to(self.device)
        lr = cfg.train.lr
        self.optimizer = torch.optim.Adam(list(self.model.parameters()) + self.source.dense_table_parameters(), lr=lr)
        self.club_optimizer = torch.optim.Adam(self.club.parameters(), lr=lr)
        self.step_model = self.source.training_model(self.model)

        self.progress = Progress()
        self.epochs_trained_here = 0  # for per-epoch averages after a resume
        self.best_state: dict | None = None
        self.warm_start_report: dict | None = None
        if resume_state is not None:
            self.load_state(resume_state)
            log.info("resumed at epoch %d", self.progress.next_epoch)
        elif cfg.train.warm_start:
            latest = cfg.train.warm_start == "latest"
            published = find_published(
                cfg.output.output_dir if latest else cfg.train.warm_start, latest, cfg.data.s3_endpoint_url
            )
            if published is not None:
                self.warm_start_report = self.source.warm_start(published, self.model, self.club, self.optimizer)
        self.outputs = (
            RunOutputs(cfg.output.output_dir, cfg.data.s3_endpoint_url) if ctx.is_main else None
        )
        if self.outputs is not None:
            for record in self.progress.history:  # a resumed run keeps its earlier epochs
                self.outputs.append_metrics(record)

    # ---- the run ------------------------------------------------------------------------
    def fit(self) -> dict | None:
        cfg, ctx = self.cfg, self.ctx
        run_started = time.monotonic()
        totals = EpochTimes()
        for epoch in range(self.progress.next_epoch, cfg.train.epochs):
            losses, times = self.train_epoch(epoch)
            valid, test, eval_s = self.validate()
            times.eval_s = eval_s
            totals.add(times)
            self.epochs_trained_here += 1
            improved, stop = self._record_epoch(epoch, losses, valid, test, times)
            self._checkpoint_and_report(epoch, improved, stop)
            if stop:
                log.info("early stop at epoch %d (best epoch %d)", epoch, self.progress.best_epoch)
                break
        return self.summary(totals, time.monotonic() - run_started)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], EpochTimes]:
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        plan = self.source.plan_epoch(epoch)
        steps = plan.num_steps(ctx.world_size)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        partial = self.progress.partial_epoch if self.progress.partial_epoch.get("epoch") == epoch else {}
        first_step = partial.get("next_step", 0)
        sums = dict(partial.get("sums") or dict.fromkeys(LOSS_TERMS, 0.0))
        times = EpochTimes(**partial["times"]) if partial else EpochTimes()
        if first_step:
            log.info("epoch %d: resuming at step %d of %d", epoch, first_step, steps)
        started, train_s_before = time.monotonic(), times.train_s
        every = cfg.train.checkpoint_every_steps
        progress = StepProgress(epoch, first_step, steps, cfg.train.progress_every_s if ctx.is_main else 0.0)
        peak_lr = scaled_lr(cfg.train.lr, cfg.train.batch_size, cfg.train.lr_reference_batch, cfg.train.lr_scaling)
        prefetch = Prefetcher(
            lambda step: self.prepare_step(plan, epoch, step),
            range(first_step, steps),
            self.source.prefetch_depth,
            self.input_thread,
        )
        with prefetch:
            waited = time.monotonic()
            for step, inputs in zip(range(first_step, steps), prefetch):
                times.input_wait_s += time.monotonic() - waited
                # lr is a function of the run's step index: a resumed run sets the same one
                set_lr(self._scheduled_optimizers(), lr_at(epoch * steps + step, peak_lr, cfg.train.warmup_steps))
                terms = self.train_step(inputs, times)
                for name, value in terms.as_floats().items():
                    sums[name] += value
                times.edges += len(inputs.users)
                times.steps += 1
                progress.step_done(step, sums["total"] / (step + 1))
                if self.metrics is not None:
                    self.metrics.record_step(len(inputs.users), inputs.sample_s, inputs.fetch_s, inputs.fetched_bytes)
                if every and (step + 1) % every == 0 and step + 1 < steps:
                    times.train_s = train_s_before + time.monotonic() - started
                    self.progress.partial_epoch = {
                        "epoch": epoch, "next_step": step + 1, "sums": dict(sums), "times": asdict(times)
                    }
                    self._report({"epoch": epoch, "step": step + 1, "kind": "step"}, checkpoint=True)
                waited = time.monotonic()
        self.progress.partial_epoch = {}
        times.train_s = train_s_before + time.monotonic() - started
        return {k: v / max(steps, 1) for k, v in sums.items()}, times

    def _seed_step(self, epoch: int, step: int) -> torch.Generator:
        """Per-(epoch, step, rank) random streams for sampling and the CLUB bound's
        permutation: a run resumed at any step replays exactly what it would have done."""
        key = ((self.cfg.train.seed * 1_000_003 + epoch) * 1_000_003 + step) * 64 + self.ctx.rank
        dgl.seed(key % (2**31))  # on the input thread, the only one that samples (see prefetch)
        return torch.Generator().manual_seed(key % (2**63))

    def _scheduled_optimizers(self) -> list:
        """The optimizers the lr recipe drives: the dense network's and the user tables'
        (Q's fit keeps the configured lr: its data does not grow with the batch)."""
        return [self.optimizer, *self.source.table_optimizers()]

    def prepare_step(self, plan, epoch: int, step: int) -> StepInputs:
        """Everything a step needs that involves no other rank: its triples and loss weight,
        its random streams, and what the source prepares (sampled modes: the computation graph
        and its feature rows).

        Runs on the prefetch thread (:mod:`sea_dist.train.prefetch`), ahead of the step.
        """
        ctx = self.ctx
        users, pos, neg = plan.local_batch(step, ctx.rank, ctx.world_size)
        inputs = StepInputs(
            users, pos, neg, plan.loss_weight(step, ctx.rank, ctx.world_size), self._seed_step(epoch, step)
        )
        self.source.prepare_inputs(inputs)
        return inputs

    def train_step(self, inputs: StepInputs, times: EpochTimes) -> LossTerms:
        """One optimizer step on this worker's slice of the global batch; ``inputs.loss_weight``
        (see ``EpochPlan.loss_weight``) makes unequal slices weigh by their triples."""
        started = time.monotonic()
        pos_scores, neg_scores, views, rows = self._forward(inputs)
        terms = sea_losses(
            self.model, self.club, pos_scores, neg_scores, views, self.cfg.model, inputs.loss_rng
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.source.zero_table_grads()
        (terms.total * inputs.loss_weight).backward()  # DDP all-reduces (averages) dense gradients here
        self.source.push_table_grads(rows)
        backward_done = time.monotonic()
        # Q is fitted after the main backward and before the main step, as the reference does,
        # on every worker's rows (gathered once; each worker fits all of them, or its share with
        # the gradient summed at each inner step: train.share_club_fit).
        fit_club_step(
            self.club, terms.club_generic, terms.club_unique, self.club_optimizer,
            self.cfg.model.club_inner_steps, self.ctx if self.ctx.world_size > 1 else None,
            share_rows=self.cfg.train.share_club_fit, kernel=self.cfg.train.club_kernel,
        )
        fitted = time.monotonic()
        self.optimizer.step()
        self.source.step_tables()
        done = time.monotonic()
        times.sampling_s += inputs.sample_s
        times.feature_fetch_s += inputs.fetch_s
        times.model_s += (backward_done - started) + (done - fitted)
        times.club_fit_s += fitted - backward_done
        return terms

    def _forward(self, inputs: StepInputs):
        """(pos scores, neg scores, auxiliary views, the table rows the model read)."""
        return self.source.forward(self.step_model, inputs)

    @torch.no_grad()
    def embeddings(self, evaluation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's and item's final representation (eval mode, exact propagation); with
        ``evaluation``, only the rows the evaluator ranks need to be right."""
        self.model.eval()
        user_rep, item_rep = self.source.embeddings(self.model, evaluation)
        self.model.train()
        return user_rep, item_rep

    def validate(self) -> tuple[dict, dict, float]:
        started = time.monotonic()
        user_rep, item_rep = self.embeddings(evaluation=True)
        evaluator = self.source.evaluator
        valid = evaluator.evaluate(user_rep, item_rep, "valid")
        test = evaluator.evaluate(user_rep, item_rep, "test")
        return valid, test, time.monotonic() - started

    # ---- bookkeeping --------------------------------------------------------------------
    def _record_epoch(self, epoch, losses, valid, test, times: EpochTimes) -> tuple[bool, bool]:
        """Book the epoch; returns (new best epoch?, stop now?) by MMRec's rule."""
        p = self.progress
        score = valid[self.cfg.eval.valid_metric]
        verdict = early_stopping(score, p.best_score, p.bad_epochs, self.cfg.train.patience)
        improved = verdict.improved
        p.best_score, p.bad_epochs = verdict.best, verdict.counter
        if improved:
            p.best_epoch = epoch
            p.best_valid, p.best_test = dict(valid), dict(test)
            self.best_state = copy.deepcopy(self.parameters_state())
        p.next_epoch = epoch + 1
        record = epoch_record(epoch, losses, valid, test, p.best_epoch, times)
        p.history.append(record)
        if self.metrics is not None:
            self.metrics.record_epoch(epoch, losses, {"valid": valid, "test": test}, record["train_edges_per_s"])
            self.metrics.record_cache(self.source.cache_hit_ratio())
        if self.outputs is not None:
            self.outputs.append_metrics(record)
        if self.ctx.is_main:
            log.info(epoch_line(epoch, losses, self.cfg.eval.valid_metric, score, test, times, improved))
        return improved, verdict.stop

    def _checkpoint_and_report(self, epoch: int, improved: bool, stop: bool) -> None:
        every = max(self.cfg.train.checkpoint_every_epochs, 1)
        want_checkpoint = (epoch + 1) % every == 0 or stop or epoch + 1 == self.cfg.train.epochs
        self._report(dict(self.progress.history[-1], kind="epoch"), checkpoint=want_checkpoint)

    def _report(self, metrics: dict, checkpoint: bool) -> None:
        """Every rank reports (Ray requires the same number of calls); the ranks whose source
        attaches a checkpoint attach what :meth:`_write_checkpoint` wrote."""
        if self.ctx.report is None:
            return
        if not (checkpoint and self.source.attaches_checkpoint()):
            self.ctx.report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="sea_ckpt_") as directory:
            size = self._write_checkpoint(directory)
            if self.metrics is not None:
                self.metrics.record_checkpoint(size)
            self.ctx.report(metrics, directory)

    def _write_checkpoint(self, directory: str) -> int:
        """This rank's checkpoint files in ``directory`` (the source's own file, if its mode
        has one; ``state.pt`` from rank 0); their size in bytes."""
        size = self.source.write_rank_checkpoint(directory, asdict(self.progress), self.best_state)
        if self.ctx.is_main:
            size += os.path.getsize(save_checkpoint(directory, self.state_dict()))
        return size

    def published_state(self) -> dict:
        """What a later run warm-starts from: the (best) parameters, and what the source adds
        (the raw ids the user rows belong to); checkpoint-safe types only."""
        return self.source.published_state(self.parameters_state(), self.model.modalities, self.optimizer)

    def parameters_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "tables": self.source.table_rows_state(),
            "club": self.club.state_dict(),
        }

    def state_dict(self) -> dict:
        """``state.pt``: what the ranks share (a partitioned rank's table shard is in its own file)."""
        tables, table_optimizer = self.source.shared_table_state()
        return {
            "model": self.model.state_dict(),
            "tables": tables,
            "club": self.club.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "table_optimizer": table_optimizer,
            "club_optimizer": self.club_optimizer.state_dict(),
            "progress": asdict(self.progress),
            "best_state": self.source.shared_best_state(self.best_state),
        }

    def load_state(self, state: dict) -> None:
        state = self.source.checkpoint_to_load(state)
        self.model.load_state_dict(state["model"])
        self.source.load_shared_table_state(state["tables"], state["table_optimizer"])
        self.club.load_state_dict(state["club"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.club_optimizer.load_state_dict(state["club_optimizer"])
        self.progress = Progress(**state["progress"])
        self.best_state = state["best_state"] or None

    # ---- outputs ------------------------------------------------------------------------
    def _restore_best(self) -> None:
        """Put the best epoch's network and table rows back (what is reported and exported)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state["model"])
            self.source.load_table_rows(self.best_state["tables"])

    def summary(self, totals: EpochTimes, wall_s: float) -> dict:
        """Final metrics; every rank takes part in the gathers, rank 0 gets the result."""
        p, ctx, evaluator = self.progress, self.ctx, self.source.evaluator
        popularity = evaluator.popularity("test")
        popularity_valid = evaluator.popularity("valid")  # what validation curves compare to
        rss = ctx.all_gather_rows(torch.tensor([[peak_rss_mb()]], dtype=torch.float64))
        edges = ctx.all_gather_rows(torch.tensor([[float(totals.edges)]], dtype=torch.float64))
        self._restore_best()
        summary = {
            "mode": self.source.name,
            "warm_start": self.warm_start_report,
            "world_size": ctx.world_size,
            "dataset": self.source.dataset_summary(),
            "epochs_run": len(p.history),
            "evaluated_users": {name: len(evaluator.splits[name]) for name in ("valid", "test")},
            "skipped_eval_users_without_training": dict(evaluator.skipped_users),
            "best_epoch": p.best_epoch,
            "valid": p.best_valid,
            "test": p.best_test,
            "popularity_test": popularity,
            "popularity_test_recall@20": popularity.get("recall@20"),
            "popularity_valid_recall@20": popularity_valid.get("recall@20"),
            "throughput": throughput(totals, edges, self.epochs_trained_here),
            "peak_rss_mb_per_worker": [round(float(v), 1) for v in rss.flatten()],
            "wall_s": wall_s,
            "output_dir": redact_uri(self.cfg.output.output_dir),
            "config": redact_config(config_to_dict(self.cfg)),
        }
        summary.update(self.source.summary_extras(totals.steps, self.epochs_trained_here))
        return summary

    def write_outputs(self, summary: dict) -> None:
        """Stage the best epoch's embeddings (raw ids; a collective where the source says so),
        then on rank 0 report.html and summary.json under runs/<publish_id>/, and publish them
        with MANIFEST.json (written last). The best epoch's parameters are in place already:
        :meth:`summary` put them back."""
        staged = self.source.stage_outputs(self.embeddings)
        if staged is None:
            return
        publisher, outputs, publish_id, version = staged
        outputs.write_bytes(MODEL_FILE, published_model_bytes(self.published_state()))
        outputs.write_text("report.html", render_report(summary, self.progress.history))
        outputs.write_summary(summary)
        publisher.publish(
            self.cfg.train.run_name,
            publish_id,
            version,
            config_fingerprint(summary["config"]),
            keep_runs=self.cfg.output.keep_runs,
        )

