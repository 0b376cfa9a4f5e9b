"""Approximate kNN (IVF in plain torch) against the exact blocked search."""
import numpy as np
import pytest
import torch

from sea_dist.graph.ann import approximate_topk_cosine, topk_cosine
from sea_dist.graph.knn import exact_topk_cosine


def _clustered(n=4000, dim=48, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)


def _recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact))
    return hits / exact.numel()


def test_recall_against_exact_and_output_contract():
    feats = _clustered()
    exact = exact_topk_cosine(feats, 10, block_size=1024)
    approx = approximate_topk_cosine(feats, 10, seed=3, block_size=1024)
    assert approx.shape == exact.shape and approx.dtype == torch.int64
    assert torch.equal(approx[:, 0], torch.arange(len(feats)))  # self first, like exact
    assert _recall(approx, exact) >= 0.9
    assert torch.equal(approx, approximate_topk_cosine(feats, 10, seed=3, block_size=1024))  # seeded


def test_reduced_dimensions_with_rerank_keep_recall():
    feats = _clustered(n=3000, dim=96, seed=1)
    exact = exact_topk_cosine(feats, 10)
    approx = approximate_topk_cosine(feats, 10, reduce_dim=32, rerank=4, seed=0)
    assert _recall(approx, exact) >= 0.85


def test_topk_cosine_switches_at_the_threshold():
    feats = _clustered(n=600, dim=16)
    assert torch.equal(topk_cosine(feats, 5, exact_max_items=600), exact_topk_cosine(feats, 5))
    approx = topk_cosine(feats, 5, exact_max_items=599, seed=0)
    assert approx.shape == (600, 5) and _recall(approx, exact_topk_cosine(feats, 5)) >= 0.85
    with pytest.raises(ValueError, match="exceeds"):
        approximate_topk_cosine(feats[:3], 5)
