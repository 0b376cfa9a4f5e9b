"""One matrix product shared out over the ranks of a data-parallel step.

SEA folds its square feature transform into every narrow Linear that reads it
(:func:`sea_dist.model.sea.linear_after_linear`): ``outer.W @ L.W`` costs ``out x d x d``
multiply-adds per step, the same on every rank whatever its batch, so P data-parallel ranks
pay for it P times (~5.4 G multiply-adds per step for 4096-d image features at k = 64).
Measured on 2 CPU workers of one machine it is a minor part of a step and sharing did not pay
(``train.share_weight_products`` is off by default); the case for it is many workers. Here
rank r computes only its block of the product's rows and the blocks are all-gathered
(``out x d`` floats); in backward the ranks' output gradients are summed once (``out x d``
floats) and each rank forms the parameter gradients of its own block only.

Why the gradients come out right under DDP: DDP averages each parameter's gradient over the
ranks. A rank returns, for its rows, the gradient of the *sum* of every rank's loss (and zero
elsewhere), so the average is ``1/P`` times that sum's gradient: exactly what DDP gives when
every rank differentiates the whole product for its own loss. Same numbers, float rounding
aside (``tests/unit/test_sharded_product.py``).

The collectives run on their own process group, so their order never interleaves with DDP's
gradient buckets, and every rank must call the product the same number of times in the same
order: callers decide to use it from shapes alone, never from their batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

#: Products smaller than this (multiply-adds) stay local: sharing out a product that takes
#: microseconds costs more in collectives than it saves (the bundled dataset's 256-d features
#: are ~17M; MMRec's 4096-d image features ~4.3G for the 4k-wide input layer).
MIN_SHARED_MACS = 1 << 26


class ShardedProduct:
    """``a @ w`` for 2-D ``a`` [out, m] and ``w`` [m, d], its rows computed by the rank that
    owns them (:class:`_ShardedMatmul`); small products stay local. The model calls it only in
    training forwards (``ModalityBranch._product``), which every rank runs alike."""

    def __init__(self, group: dist.ProcessGroup | None = None, min_macs: int = MIN_SHARED_MACS):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.min_macs = min_macs
        self.shared_calls = 0  # how many products this rank shared out (tests, benchmarks)

    def __call__(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out, m = a.shape
        if self.world == 1 or out * m * w.shape[1] < self.min_macs:
            return a @ w
        self.shared_calls += 1
        return _ShardedMatmul.apply(a, w, self)


def _row_blocks(n: int, world: int) -> list[tuple[int, int]]:
    """Every rank's [lo, hi) rows of an n-row product: contiguous, sizes differing by at most one."""
    edges = [n * r // world for r in range(world + 1)]
    return list(zip(edges, edges[1:]))


class _ShardedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, w: torch.Tensor, product: ShardedProduct) -> torch.Tensor:
        blocks = _row_blocks(a.shape[0], product.world)
        lo, hi = blocks[product.rank]
        height = max(b - a_ for a_, b in blocks)
        mine = a.new_zeros(height, w.shape[1])
        # in the parameters' precision (fp32) even under autocast: the consumer casts the
        # product as it would the local one, and the collectives stay in a type gloo has
        with torch.autocast(a.device.type, enabled=False):
            torch.mm(a[lo:hi], w, out=mine[: hi - lo])
        gathered = [torch.empty_like(mine) for _ in range(product.world)]
        dist.all_gather(gathered, mine, group=product.group)
        ctx.save_for_backward(a, w)
        ctx.product, ctx.rows = product, (lo, hi)
        return torch.cat([g[: b - a_] for g, (a_, b) in zip(gathered, blocks)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, w = ctx.saved_tensors
        lo, hi = ctx.rows
        total = grad.to(a.dtype).contiguous().clone()
        dist.all_reduce(total, group=ctx.product.group)  # every rank's d(loss)/d(product), summed
        mine = total[lo:hi]
        grad_a = torch.zeros_like(a)
        grad_a[lo:hi] = mine @ w.t()
        grad_w = a[lo:hi].t() @ mine
        return grad_a, grad_w, None
