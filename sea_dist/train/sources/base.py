"""What a batch source is: everything about a training mode that the loop must not know.

:class:`~sea_dist.train.loop.Trainer` runs one loop for every mode; a mode is one
:class:`BatchSource` — where the graph, the features and the per-user tables live, and so how
an epoch is planned, how a step's inputs are produced, how the table rows are read and updated,
how the evaluation and export embeddings are computed and which table state a checkpoint holds.
The trainer owns what every mode shares (the dense network, CLUB's Q and their optimizers, the
progress record) and hands it to the source's methods as arguments: a source keeps no state
between two of its own hooks except its data and its tables.

One step, in the order the trainer calls it::

    plan = source.plan_epoch(epoch)                     # once per epoch, every rank
    source.prepare_inputs(inputs)                       # input thread: sample, fetch (no collective)
    pos, neg, views, rows = source.forward(model, inputs)   # main thread: gather rows, forward
    source.zero_table_grads(); backward; source.push_table_grads(rows)
    dense step; source.step_tables()
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sea_dist.config import Config
from sea_dist.eval.evaluator import Evaluator
from sea_dist.model.blocks import MiniBatch
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.publish import Publisher
from sea_dist.runtime.distributed import WorkerContext


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class StepInputs:
    """One step's inputs, prepared ahead of it (:meth:`Trainer.prepare_step`)."""

    users: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    loss_weight: float
    loss_rng: torch.Generator
    batch: MiniBatch | None = None  # sampled modes: the computation graph
    features: dict[str, torch.Tensor] | None = None  # its input items' raw feature rows
    sample_s: float = 0.0
    fetch_s: float = 0.0
    fetched_bytes: int = 0


#: (scores of the positives, of the negatives, the auxiliary views, the table rows the model read)
StepOutput = tuple[torch.Tensor, torch.Tensor, object, object]


class BatchSource:
    """One training mode's data, tables and step inputs. Subclasses set, during ``__init__``:
    ``name`` (the summary's ``mode``), ``modality_dims``, ``evaluator`` and ``prefetch_depth``;
    :meth:`make_tables` sets ``tables``."""

    name: str
    modality_dims: dict[str, int]
    evaluator: Evaluator
    prefetch_depth: int = 0
    tables: object

    def __init__(self, cfg: Config, ctx: WorkerContext):
        self.cfg, self.ctx, self.device = cfg, ctx, ctx.device

    # ---- setup ------------------------------------------------------------------------------
    def make_tables(self, modalities: list[str]) -> object:
        """Create the per-user tables (after the network: both draw from the seeded global RNG)."""
        raise NotImplementedError

    def dense_table_parameters(self) -> list[nn.Parameter]:
        """Table parameters the dense Adam also trains (the reference's single optimizer)."""
        return []

    def table_optimizers(self) -> list[torch.optim.Optimizer]:
        """The tables' own optimizers, which the lr recipe drives with the dense one."""
        return []

    def training_model(self, model: nn.Module) -> nn.Module:
        """What a step calls: the network, wrapped in DDP when several ranks train it (and,
        with ``train.share_weight_products``, its folded weights shared out over the ranks)."""
        if self.ctx.world_size == 1:
            return model
        if self.cfg.train.share_weight_products:
            from sea_dist.runtime.sharded_product import ShardedProduct

            # its own group: these collectives never interleave with DDP's gradient buckets
            model.share_weight_products(ShardedProduct(torch.distributed.new_group()))
        return DistributedDataParallel(model)

    # ---- one epoch, one step ----------------------------------------------------------------
    def plan_epoch(self, epoch: int):
        """This rank's triples of ``epoch``: ``num_steps``, ``local_batch``, ``loss_weight``."""
        raise NotImplementedError

    def prepare_inputs(self, inputs: StepInputs) -> None:
        """Fill in what the step needs beyond its triples (input thread, no collective)."""

    def forward(self, model: nn.Module, inputs: StepInputs) -> StepOutput:
        raise NotImplementedError

    def zero_table_grads(self) -> None:
        pass

    def push_table_grads(self, rows) -> None:
        """After backward: make the table gradient the world's average."""

    def step_tables(self) -> None:
        pass

    # ---- evaluation and export --------------------------------------------------------------
    def embeddings(self, model: nn.Module, evaluation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) representations, the model in eval mode and under no_grad. With
        ``evaluation`` only the rows the evaluator ranks need to be right."""
        raise NotImplementedError

    def item_degree_of(self, items: np.ndarray) -> np.ndarray:
        """Training degree of the given item indices (0 = a cold-start item)."""
        raise NotImplementedError

    def cache_hit_ratio(self) -> float:
        """Share of feature rows served without a read (in-memory features: all)."""
        return 1.0

    # ---- checkpoints ------------------------------------------------------------------------
    def table_rows_state(self) -> dict:
        """The table rows (the best epoch's copy; no optimizer moments)."""
        raise NotImplementedError

    def load_table_rows(self, state: dict) -> None:
        raise NotImplementedError

    def shared_table_state(self) -> tuple[dict, dict]:
        """(tables, table optimizer) as ``state.pt`` holds them."""
        raise NotImplementedError

    def load_shared_table_state(self, tables: dict, optimizer: dict) -> None:
        raise NotImplementedError

    def shared_best_state(self, best_state: dict | None) -> dict:
        """The best epoch's copy as ``state.pt`` holds it."""
        return best_state or {}

    def attaches_checkpoint(self) -> bool:
        """Whether this rank attaches a checkpoint to its report (every rank holds the same
        state: rank 0's file is enough)."""
        return self.ctx.is_main

    def write_rank_checkpoint(self, directory: str, progress: dict, best_state: dict | None) -> int:
        """This rank's own checkpoint file, if its mode has one; its size in bytes."""
        return 0

    def checkpoint_to_load(self, state: dict) -> dict:
        """A loaded checkpoint as :meth:`Trainer.load_state` reads it (this rank's shard merged in)."""
        return state

    # ---- outputs ----------------------------------------------------------------------------
    def dataset_summary(self) -> dict:
        raise NotImplementedError

    def summary_extras(self, steps: int, epochs: int) -> dict:
        """Mode-specific summary entries; a collective where they gather per-worker figures."""
        return {}

    def published_state(self, parameters: dict, modalities: list[str], optimizer: torch.optim.Optimizer) -> dict:
        """What a later run warm-starts from (checkpoint-safe types only)."""
        raise NotImplementedError

    def stage_outputs(
        self, embeddings: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[Publisher, RunOutputs, str, str] | None:
        """Stage this run's embeddings under a new publish id; on the rank that publishes,
        (its publisher, the staged outputs, the publish id, the dataset version), ``None``
        elsewhere."""
        raise NotImplementedError

    def warm_start(self, published: dict, model: nn.Module, club: nn.Module, optimizer) -> dict:
        raise NotImplementedError(f"{self.name} mode has no warm start")


def timed_sample_and_fetch(
    inputs: StepInputs,
    sample: Callable[..., MiniBatch],
    fetch: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], int]],
) -> None:
    """Sampled modes: the step's computation graph, then its input items' feature rows."""
    started = time.monotonic()
    inputs.batch = sample(*(torch.from_numpy(a) for a in (inputs.users, inputs.pos, inputs.neg)))
    sampled = time.monotonic()
    inputs.features, inputs.fetched_bytes = fetch(inputs.batch.input_items)
    inputs.sample_s, inputs.fetch_s = sampled - started, time.monotonic() - sampled


def forward_on_batch(model: nn.Module, inputs: StepInputs, rows, cfg: Config, device: torch.device) -> StepOutput:
    """Sampled modes: the network on the step's computation graph, reading ``rows``."""
    bf16 = cfg.train.precision == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(inputs.batch.to(device), inputs.features, rows)
    views = out.views.to_float() if bf16 else out.views  # losses in fp32
    return out.pos_scores.float(), out.neg_scores.float(), views, rows
