"""The sampled computation must reproduce the full-graph one when nothing is dropped."""
import numpy as np
import pytest
import torch

from sea_dist.config import GraphConfig, ModelConfig
from sea_dist.graph.build import build_train_graph
from sea_dist.graph.sampler import BatchSampler
from sea_dist.model.sea import SEA, UserTables


def _toy(seed=0, n_users=40, n_items=30, n_edges=300, dims=None):
    rng = np.random.default_rng(seed)
    dims = dims or {"image": 12, "text": 8}
    pairs = np.unique(
        np.stack([rng.integers(0, n_users, n_edges), rng.integers(0, n_items, n_edges)], 1), axis=0
    )
    features = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    return pairs[:, 0], pairs[:, 1], features


@pytest.mark.parametrize("n_mm_layers", [1, 2])
def test_full_fanout_sampling_matches_full_graph(n_mm_layers):
    torch.manual_seed(0)
    users, items, features = _toy()
    n_users, n_items = 40, 30
    cfg = ModelConfig(embedding_dim=8, n_mm_layers=n_mm_layers)
    graph = build_train_graph(n_users, n_items, users, items, features, GraphConfig(knn_k=4))
    model = SEA({m: f.shape[1] for m, f in features.items()}, cfg).eval()
    tables = UserTables(n_users, list(features), cfg.embedding_dim)
    feats = {m: torch.from_numpy(f) for m, f in features.items()}
    with torch.no_grad():
        user_rep, item_rep = model.forward_full(feats, tables, graph.full_graph())

    max_degree = int(max(graph.user_degree.max(), graph.item_degree.max()))
    sampler = BatchSampler(graph, [max_degree, max_degree + 3], knn_fanout=-1, n_mm_layers=n_mm_layers)
    rng = torch.Generator().manual_seed(1)
    bu = torch.randint(0, n_users, (64,), generator=rng)
    bp = torch.randint(0, n_items, (64,), generator=rng)
    bn = torch.randint(0, n_items, (64,), generator=rng)
    batch = sampler.sample(bu, bp, bn)
    inputs = {m: f[batch.input_items] for m, f in feats.items()}
    with torch.no_grad():
        out = model.forward_batch(batch, inputs, tables)
    expected_pos = (user_rep[bu] * item_rep[bp]).sum(1)
    expected_neg = (user_rep[bu] * item_rep[bn]).sum(1)
    torch.testing.assert_close(out.pos_scores, expected_pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.neg_scores, expected_neg, atol=1e-5, rtol=1e-5)


def test_small_fanout_is_unbiased_on_average():
    """Sampling 1 of each node's neighbours, rescaled, averages to the full result."""
    torch.manual_seed(0)
    users, items, features = _toy(seed=3)
    cfg = ModelConfig(embedding_dim=8)
    graph = build_train_graph(40, 30, users, items, features, GraphConfig(knn_k=4))
    model = SEA({m: f.shape[1] for m, f in features.items()}, cfg).eval()
    tables = UserTables(40, list(features), cfg.embedding_dim)
    feats = {m: torch.from_numpy(f) for m, f in features.items()}
    with torch.no_grad():
        user_rep, item_rep = model.forward_full(feats, tables, graph.full_graph())
    bu, bp, bn = torch.tensor([0, 5]), torch.tensor([1, 2]), torch.tensor([3, 4])
    expected = (user_rep[bu] * item_rep[bp]).sum(1)
    sampler = BatchSampler(graph, [2, 2], knn_fanout=3)
    from sea_dist.graph.dgl_compat import dgl

    dgl.seed(0)
    draws = []
    with torch.no_grad():
        for _ in range(3000):
            batch = sampler.sample(bu, bp, bn)
            inputs = {m: f[batch.input_items] for m, f in feats.items()}
            draws.append(model.forward_batch(batch, inputs, tables).pos_scores)
    mean = torch.stack(draws).mean(0)
    scale = expected.abs().max()
    assert torch.allclose(mean, expected, atol=0.05 * scale), (mean, expected)


def test_folded_linears_equal_the_plain_composition():
    """The folded order of linear_after_linear computes outer(L(x)) (associativity)."""
    from torch import nn

    from sea_dist.model.sea import linear_after_linear

    torch.manual_seed(0)
    inner, outer = nn.Linear(12, 12), nn.Linear(12, 3)
    for rows in (2, 40):  # below and above the switch to the folded order
        x = torch.randn(rows, 12)
        expected = outer(inner(x))
        torch.testing.assert_close(linear_after_linear(x, outer, inner.weight, inner.bias), expected)
        half = linear_after_linear(x, nn.Linear(6, 3).requires_grad_(False), inner.weight[:6], inner.bias[:6])
        assert half.shape == (rows, 3)
