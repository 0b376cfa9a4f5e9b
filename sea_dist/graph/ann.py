"""Approximate item-item kNN (cosine) for catalogs where the exact blocked search is too slow.

:func:`exact_topk_cosine` costs ``n^2 d`` flops: 50k x 4096-d items take minutes on 2 cores, 200k
items about 16x that, 5M items are out of reach. :func:`approximate_topk_cosine` is an inverted
file index (IVF) built for the *all-points* kNN graph, in plain torch (no extra dependency,
same code on CPU and GPU). ``docs/knn.md`` has the measurements against faiss (IVF-Flat, HNSW),
hnswlib and pynndescent that chose it (``benchmarks/knn_recall.py``).

Algorithm (``method="ivf"``):

1. **Coarse clusters.** Spherical k-means (``niter`` rounds) with ``nlist`` centroids
   (default ``round(sqrt(n))``) on a seeded sample of at most ``train_size`` L2-normalised rows.
2. **Probe lists.** Every item is assigned its ``nprobe`` most similar centroids (a blocked
   ``n x nlist`` product); the first one is the list the item *lives* in.
3. **Cluster-blocked search.** For each list, the items that probe it are scored against the
   items that live in it with one matrix product per block (``block_size x block_size``
   floats at most) and each item keeps a running top-k. This is what makes it fast for a kNN
   *graph*: per-query index searches (faiss, hnswlib) stream every probed list from memory
   once per query, which at 4096-d is memory-bandwidth bound; here each probed pair of blocks
   is one GEMM. Cost ``~ n * nprobe * (n / nlist) * d`` (``n^1.5`` at the default nlist)
   instead of ``n^2 d``.
4. **Optional dimension reduction** (``reduce_dim=r``): the search of steps 1-3 runs on
   ``r``-d projections (uncentred PCA of the normalised rows, fitted on the sample, so inner
   products are preserved as well as rank ``r`` allows), keeps ``rerank * k`` candidates per
   item and re-scores those with the full features (exact cosine). Measured in
   ``docs/knn.md``: a seeded random projection loses too much recall to be worth it; PCA-256 +
   rerank keeps recall (0.999 at 50k x 4096) but saved no time at 50k or 200k items, so it is
   off by default; it shrinks the search state to ``n x r`` when that matters.

Memory: the features are never copied whole (rows are normalised as they are gathered, from
precomputed norms); the extra state is ``O(n * (nprobe + candidates))`` integers/floats, the
``nlist x d`` centroids, one ``block_size^2`` score block and, with ``reduce_dim``, the
``n x r`` projections. No ``n x n`` matrix ever exists.

Output contract (the same as the exact search): int64 ``[n, k]``, row ``i`` starts with ``i``
itself, then the other neighbours by decreasing similarity. Deterministic for a ``seed`` (on
one machine and thread count: float sums are the only source of variation). Rows whose probed
lists hold fewer than ``k`` candidates (tiny or degenerate clusters) are completed by an exact
search of those rows.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from sea_dist.graph.knn import exact_topk_cosine

__all__ = ["approximate_topk_cosine", "topk_cosine", "APPROX_METHODS"]

log = logging.getLogger(__name__)

#: methods :func:`approximate_topk_cosine` implements
APPROX_METHODS = ("ivf",)


def _as_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-d [n_items, dim], got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    return x


class _Rows:
    """Normalised float32 rows of ``x`` on demand (``x`` is never copied whole)."""

    def __init__(self, x: torch.Tensor, block_size: int):
        self.x = x
        norms = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        for i in range(0, x.shape[0], block_size):
            norms[i : i + block_size] = x[i : i + block_size].to(torch.float32).norm(dim=1)
        self.inv = 1.0 / norms.clamp_min(1e-12)  # zero rows stay zero: similarity 0 to all

    def __call__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(idx, slice):
            return self.x[idx].to(torch.float32) * self.inv[idx].unsqueeze(1)
        # index_select: parallel, unlike advanced indexing
        return self.x.index_select(0, idx).to(torch.float32) * self.inv.index_select(0, idx).unsqueeze(1)


class _Projected:
    """Normalised ``r``-d projections of all rows, computed once (``n x r`` floats)."""

    def __init__(self, rows: _Rows, proj: torch.Tensor, block_size: int):
        n = rows.x.shape[0]
        self.y = torch.empty((n, proj.shape[1]), dtype=torch.float32, device=rows.x.device)
        for i in range(0, n, block_size):
            b = rows(slice(i, i + block_size)) @ proj
            self.y[i : i + block_size] = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def __call__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        return self.y[idx] if isinstance(idx, slice) else self.y.index_select(0, idx)


def _fit_projection(sample: torch.Tensor, r: int, gen: torch.Generator) -> torch.Tensor:
    """``[d, r]``: top-r right singular vectors of the normalised sample (uncentred PCA).

    Randomised (``torch.svd_lowrank``, seeded through ``gen``): a full ``eigh`` of a 4096 x 4096
    second moment took 52 s here, this about 15 s.
    """
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        _, _, v = torch.svd_lowrank(sample, q=min(r + 16, *sample.shape), niter=3)
    finally:
        torch.random.set_rng_state(state)
    v = v[:, :r]
    # each singular vector's sign is arbitrary: fix it so results are reproducible
    sign = torch.sign(v[v.abs().argmax(dim=0), torch.arange(v.shape[1])])
    return (v * torch.where(sign == 0, 1.0, sign)).contiguous()


def _kmeans(sample: torch.Tensor, nlist: int, niter: int, gen: torch.Generator, block: int) -> torch.Tensor:
    """Spherical k-means on normalised rows; empty clusters keep their previous centroid."""
    m = sample.shape[0]
    centroids = sample[torch.randperm(m, generator=gen)[:nlist].to(sample.device)].clone()
    for _ in range(niter):
        assign = torch.cat([torch.argmax(sample[i : i + block] @ centroids.T, dim=1) for i in range(0, m, block)])
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        empty = torch.bincount(assign, minlength=nlist) == 0
        sums[empty] = centroids[empty]
        centroids = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return centroids


def _merge_topk(
    best_v: torch.Tensor, best_i: torch.Tensor, rows: torch.Tensor, v: torch.Tensor, i: torch.Tensor
) -> None:
    """Fold candidates ``(v, i)`` of the (distinct) ``rows`` into their running top-k."""
    kk = best_v.shape[1]
    cv = torch.cat([best_v.index_select(0, rows), v], dim=1)
    ci = torch.cat([best_i.index_select(0, rows), i], dim=1)
    top_v, pos = torch.topk(cv, kk, dim=1)
    best_v.index_copy_(0, rows, top_v)
    best_i.index_copy_(0, rows, torch.gather(ci, 1, pos))


def _self_first(idx: torch.Tensor) -> torch.Tensor:
    """Put each row's own index first (prepending it, dropping the last, where it is absent)."""
    n, k = idx.shape
    me = torch.arange(n, device=idx.device).unsqueeze(1)
    is_me = idx == me
    has_me = is_me.any(dim=1, keepdim=True)
    # stable order: self first, then the others as ranked; a missing self pushes out the last
    key = torch.where(is_me, -1, torch.arange(k, device=idx.device).expand(n, k))
    ordered = torch.gather(idx, 1, torch.argsort(key, dim=1, stable=True))
    shifted = torch.cat([me, idx[:, : k - 1]], dim=1)
    return torch.where(has_me, ordered, shifted)


def approximate_topk_cosine(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    method: str = "ivf",
    seed: int = 0,
    nlist: int | None = None,
    nprobe: int = 8,
    niter: int = 10,
    train_size: int | None = None,
    reduce_dim: int | None = None,
    rerank: int = 4,
    block_size: int = 4096,
) -> torch.Tensor:
    """Approximate indices ``[n, k]`` of each row's k most cosine-similar rows, self first.

    ``nlist`` coarse clusters (default ``round(sqrt(n))``), each item searched in its
    ``nprobe`` nearest clusters; ``train_size`` rows (default ``64 * nlist``) train k-means for
    ``niter`` rounds. ``reduce_dim=r`` searches ``r``-d PCA projections and re-scores
    ``rerank * k`` candidates per item with the full features. See the module docstring.
    """
    if method not in APPROX_METHODS:
        raise ValueError(f"unknown approximate kNN method {method!r} (available: {list(APPROX_METHODS)})")
    x = _as_tensor(features)
    n, d = x.shape
    if k > n:
        raise ValueError(f"knn_k={k} exceeds the number of items ({n})")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dev = x.device
    started = time.monotonic()
    gen = torch.Generator().manual_seed(int(seed))
    nlist = int(nlist) if nlist else max(1, int(round(math.sqrt(n))))
    nlist = min(nlist, n)
    nprobe = max(1, min(int(nprobe), nlist))
    m = min(n, int(train_size) if train_size else 64 * nlist)
    sample_idx = torch.randperm(n, generator=gen)[:m].sort().values.to(dev)

    rows = _Rows(x, block_size)
    reduce = reduce_dim is not None and 0 < int(reduce_dim) < d
    kq = k
    if reduce:
        proj = _fit_projection(rows(sample_idx), int(reduce_dim), gen)
        search_rows = _Projected(rows, proj, block_size)
        kq = min(n, max(k, int(rerank) * k))
    else:
        search_rows = rows  # type: ignore[assignment]

    # 1. coarse clusters
    centroids = _kmeans(search_rows(sample_idx), nlist, niter, gen, block_size)
    # 2. probe lists: an item lives in probes[:, 0] and is searched in all of probes
    probes = torch.empty((n, nprobe), dtype=torch.int64, device=dev)
    for i in range(0, n, block_size):
        probes[i : i + block_size] = torch.topk(search_rows(slice(i, i + block_size)) @ centroids.T, nprobe, dim=1).indices
    home = probes[:, 0]
    members_sorted = torch.argsort(home, stable=True)
    m_counts = torch.bincount(home, minlength=nlist).tolist()
    flat = probes.reshape(-1)
    q_sorted = torch.argsort(flat, stable=True) // nprobe  # query rows grouped by probed list
    q_counts = torch.bincount(flat, minlength=nlist).tolist()
    del probes, flat, home
    log.info("ANN: %d items, %d lists, nprobe %d, search dim %d (%.1fs)", n, nlist, nprobe,
             int(reduce_dim) if reduce else d, time.monotonic() - started)

    # 3. cluster-blocked search with a running top-kq per item
    best_v = torch.full((n, kq), -math.inf, dtype=torch.float32, device=dev)
    best_i = torch.full((n, kq), -1, dtype=torch.int64, device=dev)
    m_start = q_start = 0
    for lst in range(nlist):
        mc, qc = m_counts[lst], q_counts[lst]
        members = members_sorted[m_start : m_start + mc]
        queries = q_sorted[q_start : q_start + qc]
        m_start += mc
        q_start += qc
        if mc == 0 or qc == 0:
            continue
        for a in range(0, mc, block_size):
            mem = members[a : a + block_size]
            db = search_rows(mem)
            take = min(kq, mem.numel())
            for b in range(0, qc, block_size):
                qr = queries[b : b + block_size]
                v, pos = torch.topk(search_rows(qr) @ db.T, take, dim=1)
                _merge_topk(best_v, best_i, qr, v, mem[pos])
    by_home = members_sorted
    del best_v, q_sorted

    # rows whose probed lists held fewer than kq items: search them exactly
    short = torch.nonzero((best_i < 0).any(dim=1)).reshape(-1)
    if short.numel():
        log.info("ANN: %d rows with fewer than %d candidates searched exactly", short.numel(), kq)
        for s in range(0, short.numel(), block_size):
            r = short[s : s + block_size]
            q = search_rows(r)
            top_v = torch.full((r.numel(), kq), -math.inf, device=dev)
            top_i = torch.full((r.numel(), kq), -1, dtype=torch.int64, device=dev)
            for c in range(0, n, block_size):
                sims = q @ search_rows(slice(c, c + block_size)).T
                v, pos = torch.topk(sims, min(kq, sims.shape[1]), dim=1)
                cv, ci = torch.cat([top_v, v], 1), torch.cat([top_i, pos + c], 1)
                top_v, p = torch.topk(cv, kq, dim=1)
                top_i = torch.gather(ci, 1, p)
            best_i[r] = top_i

    # 4. re-score the candidates with the full features. Items are taken in their home-list
    # order: neighbouring items share most candidates, so one GEMM against the union of a
    # group's candidates replaces n * kq random row gathers (4x faster at 4096-d here).
    if reduce:
        out = torch.empty((n, k), dtype=torch.int64, device=dev)
        group = max(1, block_size // 16)
        for i in range(0, n, group):
            qrows = by_home[i : i + group]
            cand = best_i.index_select(0, qrows)
            uniq, inv = torch.unique(cand, return_inverse=True)
            sims = torch.empty(cand.shape, dtype=torch.float32, device=dev)
            q = rows(qrows)
            for c in range(0, uniq.numel(), block_size):
                part = q @ rows(uniq[c : c + block_size]).T  # [group, <= block]
                hit = (inv >= c) & (inv < c + block_size)
                rr, cc = torch.nonzero(hit, as_tuple=True)
                sims[rr, cc] = part[rr, inv[rr, cc] - c]
            out.index_copy_(0, qrows, torch.gather(cand, 1, torch.topk(sims, k, dim=1).indices))
        best_i = out
    log.info("ANN: done in %.1fs", time.monotonic() - started)
    return _self_first(best_i).cpu()


def topk_cosine(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    exact_max_items: int = 50_000,
    block_size: int = 4096,
    **params,
) -> torch.Tensor:
    """Exact top-k cosine up to ``exact_max_items`` items, approximate (``params``) above."""
    n = int(features.shape[0])
    if n <= exact_max_items:
        return exact_topk_cosine(features, k, block_size)
    return approximate_topk_cosine(features, k, block_size=block_size, **params)
