"""kNN graph, its normalisation, and the GCN propagation operator, by hand."""
import numpy as np
import pytest
import torch

from sea_dist.graph.knn import exact_topk_cosine, mixed_knn_graph
from sea_dist.model.blocks import Relation
from sea_dist.model.full_graph import FullGraph
from sea_dist.model.normalization import KNN_ROW_SUM_EPS, knn_edge_weights, modality_mix_weights


def test_topk_cosine_includes_self_and_is_block_size_independent():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0]], dtype=np.float32)
    top = exact_topk_cosine(feats, k=2, block_size=1)
    assert top[:, 0].tolist() == [0, 1, 2, 3]  # self is the most similar
    assert top[:, 1].tolist() == [1, 0, 3, 2]
    assert torch.equal(top, exact_topk_cosine(feats, k=2, block_size=3))
    with pytest.raises(ValueError, match="exceeds"):
        exact_topk_cosine(feats, k=5)


def test_knn_weights_are_one_over_k():
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    cols = torch.tensor([0, 1, 1, 0, 2, 0])
    w = knn_edge_weights(rows, cols, 3)
    assert torch.allclose(w, torch.full((6,), 1.0 / (2 + KNN_ROW_SUM_EPS)))


def test_mixed_graph_sums_shared_neighbours():
    image = np.array([[1, 0], [1, 0.1], [0, 1]], dtype=np.float32)
    text = np.array([[1, 0], [0, 1], [0.1, 1]], dtype=np.float32)
    rows, cols, w = mixed_knn_graph({"image": image, "text": text}, k=2, mix_weights=[0.1, 0.9])
    dense = torch.zeros(3, 3)
    dense[rows, cols] = w
    half = 1.0 / 2
    # item 0: image {0, 1}, text {0, 2 (cos .0995) vs 1 (0)} -> {0, 2}
    assert dense[0, 0].item() == pytest.approx(half, rel=1e-5)  # 0.1/2 + 0.9/2
    assert dense[0, 1].item() == pytest.approx(0.1 * half, rel=1e-5)
    assert dense[0, 2].item() == pytest.approx(0.9 * half, rel=1e-5)
    assert dense.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)


def test_modality_mix_weights():
    assert modality_mix_weights(["image", "text"], 0.1) == [0.1, 0.9]
    assert modality_mix_weights(["a", "b", "c"], 0.1) == pytest.approx([1 / 3] * 3)
    assert modality_mix_weights(["a"], 0.1) == [1.0]
    with pytest.raises(ValueError):
        modality_mix_weights(["a", "b"], 0.1, [1.0])


def test_gcn_operator_by_hand():
    # edges (u0,i0), (u0,i1), (u1,i0): deg u0=2, u1=1, i0=2, i1=1
    users, items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    g = FullGraph.from_edges(2, 2, users, items, torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]))
    x_items = torch.tensor([[1.0], [10.0]])
    h_users = (g.user_item @ x_items).flatten()
    # u0 = 1/sqrt(2*2) * 1 + 1/sqrt(2*1) * 10 ; u1 = 1/sqrt(1*2) * 1
    assert h_users.tolist() == pytest.approx([0.5 + 10 / np.sqrt(2), 1 / np.sqrt(2)], rel=1e-6)
    x_users = torch.tensor([[1.0], [4.0]])
    h_items = (g.item_user @ x_users).flatten()
    assert h_items.tolist() == pytest.approx([0.5 + 4 / np.sqrt(2), 1 / np.sqrt(2)], rel=1e-6)


def test_relation_aggregate_is_a_weighted_sum():
    rel = Relation(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), torch.tensor([1.0, 2.0, 3.0]), 2)
    out = rel.aggregate(torch.tensor([[1.0], [10.0]]))
    assert out.flatten().tolist() == [21.0, 30.0]
