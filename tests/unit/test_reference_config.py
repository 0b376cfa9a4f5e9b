"""configs/reference.toml is the authors' protocol: full graph, MMRec's rules, SEA's defaults."""
import os

from sea_dist.config_cli import parse_args
from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(REPO, "configs", "reference.toml")


def test_reference_config_is_the_authors_protocol():
    cfg, _ = parse_args(["--config", REFERENCE])
    t, m, g, e = cfg.train, cfg.model, cfg.graph, cfg.eval
    assert t.full_graph and not t.partitioned  # the authors propagate over the whole graph
    assert (t.epochs, t.patience, t.lr, t.batch_size, t.seed) == (1000, 20, 1e-4, 2048, 999)
    assert (t.lr_scaling, t.warmup_steps) == ("none", 0)  # the authors' constant lr
    assert t.negative_items == "train_items"  # MMRec's negatives
    assert (m.embedding_dim, m.n_mm_layers, m.n_ui_layers, m.temp) == (64, 1, 2, 0.2)
    assert (m.alpha_contrast, m.ureg, m.club_fit, m.club_inner_steps) == (0.012, 0.006, "as_published", 50)
    assert m.align_max_items == 0  # alignment over every item, no subset
    assert (g.knn_k, g.mm_image_weight) == (10, 0.1)
    assert e.topk == [10, 20] and e.valid_metric == "recall@20" and not e.mask_valid_at_test


def test_reference_config_trains_in_full_graph_mode(tmp_path):
    from sea_dist.train.launcher import run

    root = write_synthetic(
        SyntheticSpec(n_users=60, n_items=40, n_interactions=600, modalities={"image": 8, "text": 4}, name="ref"),
        str(tmp_path / "data"),
    )
    cfg, _ = parse_args(
        ["--config", REFERENCE, f"data.root={root}", "--output-dir", str(tmp_path / "out"),
         "train.epochs=1", "output.write_embeddings=false"]
    )
    summary = run(cfg)
    assert summary["mode"] == "full_graph" and summary["world_size"] == 1
    assert summary["epochs_run"] == 1
    assert summary["config"]["train"]["full_graph"] is True
