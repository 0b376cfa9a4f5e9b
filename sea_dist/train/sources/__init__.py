"""One batch source per training mode (see :mod:`sea_dist.train.sources.base`)."""
from __future__ import annotations

from sea_dist.config import Config
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.sources.base import BatchSource, StepInputs


def make_source(cfg: Config, ctx: WorkerContext, dataset=None) -> BatchSource:
    """The configured mode's source: ``train.partitioned``, ``train.full_graph`` or sampled."""
    if cfg.train.partitioned:
        from sea_dist.train.sources.partitioned import PartitionedSource

        return PartitionedSource(cfg, ctx)
    if cfg.train.full_graph:
        from sea_dist.train.sources.full_graph import FullGraphSource

        return FullGraphSource(cfg, ctx, dataset)
    from sea_dist.train.sources.sampled import SampledSource

    return SampledSource(cfg, ctx, dataset)


__all__ = ["BatchSource", "StepInputs", "make_source"]
