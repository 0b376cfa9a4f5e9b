"""The prefetch pipeline: same inputs in the same order as the inline loop, errors where they
belong, and a thread that stops when the epoch does."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.prefetch import InputThread, Prefetcher


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_results_come_in_step_order_from_one_thread(depth):
    threads = set()

    def produce(step):
        threads.add(threading.get_ident())
        return step * step

    thread = InputThread()
    assert list(Prefetcher(produce, range(2, 9), depth, thread)) == [s * s for s in range(2, 9)]
    assert list(Prefetcher(produce, range(3), depth, thread)) == [0, 1, 4]
    assert len(threads) == 1  # every epoch, any depth: the one input thread (DGL's RNG is per thread)
    assert threading.get_ident() not in threads


def test_an_error_surfaces_at_its_step_and_not_before():
    def produce(step):
        if step == 3:
            raise KeyError("shard gone")
        return step

    got = []
    with pytest.raises(KeyError, match="shard gone"):
        for value in Prefetcher(produce, range(6), 2, InputThread()):
            got.append(value)
    assert got == [0, 1, 2]


def test_leaving_early_cancels_what_was_not_started():
    produced = []
    release = threading.Event()

    def produce(step):
        produced.append(step)
        release.wait(timeout=60)
        return step

    with Prefetcher(produce, range(1000), 2, InputThread()) as prefetch:
        release.set()
        first = next(iter(prefetch))
    assert first == 0
    assert len(produced) <= 3  # the step taken and at most the 2 ahead, not the 1000 steps


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(lambda s: s, range(3), -1, InputThread())


def _batches(trainer, depth: int, epoch: int = 0, steps: int = 5) -> list:
    plan = trainer.source.plan_epoch(epoch)
    out = []
    produce = lambda step: trainer.prepare_step(plan, epoch, step)  # noqa: E731
    with Prefetcher(produce, range(steps), depth, trainer.input_thread) as prefetch:
        for inputs in prefetch:
            b = inputs.batch
            out.append(
                [inputs.users, inputs.neg, b.input_items.numpy(), b.input_users.numpy(),
                 *(h.item_to_user.weight.numpy() for h in b.ui_hops),
                 *(h.user_to_item.src.numpy() for h in b.ui_hops),
                 *(f.numpy() for f in inputs.features.values()),
                 inputs.loss_rng.initial_seed()]
            )
    return out


def test_prefetched_sampled_inputs_equal_inline_ones(tmp_path):
    from sea_dist.train.loop import Trainer

    root = str(tmp_path / "data")
    write_synthetic(SyntheticSpec(n_users=120, n_items=60, n_interactions=1500, modalities={"image": 6, "text": 4}), root)
    cfg = apply_overrides(Config(), {
        "data.root": root, "graph.fanouts": [3, 2], "graph.knn_fanout": 4, "train.batch_size": 64,
        "model.embedding_dim": 8, "output.output_dir": "",
    })
    trainer = Trainer(cfg, WorkerContext())
    inline, ahead = _batches(trainer, 0), _batches(trainer, 2)
    assert len(inline) == len(ahead) == 5
    for a, b in zip(inline, ahead):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    # fanouts below the degrees: the draws are random, so equality above is not vacuous
    assert not all(np.array_equal(x, y) for x, y in zip(inline[0], inline[1]) if np.shape(x) == np.shape(y))
