"""Approximate kNN (sea_dist.graph.ann): recall against the exact search, contract, switching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sea_dist.graph import ann
from sea_dist.graph.ann import approximate_topk_cosine, topk_cosine
from sea_dist.graph.knn import exact_topk_cosine

K = 10


def _clustered(n: int, dim: int, seed: int = 0, nonneg: bool = False) -> np.ndarray:
    """Overlapping clusters in a 64-d latent space mapped to ``dim`` (a smaller cousin of benchmarks/knn_recall.py's data)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((10, 64)).astype(np.float32)
    centres = topics[rng.integers(0, 10, n // 50)] + 0.3 * rng.standard_normal((n // 50, 64)).astype(np.float32)
    z = centres[rng.integers(0, n // 50, n)] + 0.6 * rng.standard_normal((n, 64)).astype(np.float32)
    x = z @ (rng.standard_normal((64, dim)).astype(np.float32) / 8) + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.maximum(x, 0) if nonneg else x


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist()))
    return hits / truth.numel()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, torch.Tensor]:
    x = _clustered(5000, 128)
    return x, exact_topk_cosine(x, K)


def test_recall_shape_self_first(data):
    x, truth = data
    got = approximate_topk_cosine(x, K, seed=0)
    assert got.shape == (5000, K) and got.dtype == torch.int64
    assert torch.equal(got[:, 0], torch.arange(5000))  # self first, like the exact search
    assert all(len(set(r)) == K for r in got.tolist())  # no duplicate neighbours
    # measured 0.983-0.992 over seeds 0-2 (nlist 71, nprobe 8); 50k benchmark: 0.9997
    assert _recall(got, truth) >= 0.95


def test_pca_rerank_keeps_recall():
    x = _clustered(4000, 512, seed=1, nonneg=True)
    truth = exact_topk_cosine(x, K)
    got = approximate_topk_cosine(x, K, reduce_dim=64, rerank=4, seed=3)
    assert torch.equal(got[:, 0], torch.arange(4000))
    assert _recall(got, truth) >= 0.95  # measured 0.988


def test_deterministic_for_a_seed(data):
    x, _ = data
    a = approximate_topk_cosine(x, K, seed=7)
    b = approximate_topk_cosine(x, K, seed=7)
    assert torch.equal(a, b)
    # torch input, float16 input and a small block size give valid outputs too
    c = approximate_topk_cosine(torch.from_numpy(x[:600]).half(), K, seed=1, block_size=128)
    assert c.shape == (600, K) and torch.equal(c[:, 0], torch.arange(600))


def test_tiny_lists_are_completed_exactly():
    # 30 items, 15 lists, 1 probe: most probed lists hold fewer than k items
    x = _clustered(1000, 16)[:30]
    got = approximate_topk_cosine(x, K, nlist=15, nprobe=1, seed=0)
    assert (got >= 0).all() and torch.equal(got[:, 0], torch.arange(30))
    assert all(len(set(r)) == K for r in got.tolist())


def test_errors():
    x = _clustered(100, 8)
    with pytest.raises(ValueError, match="exceeds the number of items"):
        approximate_topk_cosine(x[:5], K)
    with pytest.raises(ValueError, match="unknown approximate kNN method"):
        approximate_topk_cosine(x, K, method="lsh")


def test_topk_cosine_switches_at_threshold(data, monkeypatch):
    x, truth = data
    calls = []
    real = ann.approximate_topk_cosine
    monkeypatch.setattr(ann, "approximate_topk_cosine", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert torch.equal(topk_cosine(x, K, exact_max_items=5000), truth)  # n == threshold: exact
    assert calls == []
    got = topk_cosine(x, K, exact_max_items=4999, block_size=1024, seed=2, nprobe=4)
    assert calls == [{"block_size": 1024, "seed": 2, "nprobe": 4}]
    assert got.shape == (5000, K) and torch.equal(got[:, 0], torch.arange(5000))
