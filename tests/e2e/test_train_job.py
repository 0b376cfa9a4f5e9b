"""`python jobs/train.py` end to end: Ray Train with 2 workers, resume, full-graph, S3, errors."""
import json
import os
import tempfile

import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import published_path, published_summary, run_job

FAST = ["train.batch_size=512", "model.club_inner_steps=5", "eval.user_batch_size=128"]


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _test_metrics_from_export(output_dir, root, k=20):
    """Test Recall/Precision/NDCG@k of the published embeddings, computed here with numpy:
    score every item, mask the user's training items, rank, count hits (binary relevance,
    ideal DCG over min(k, |relevant|) items); test users without training edges are skipped,
    as MMRec does. Also the chance expectation of Recall@k (a random ranking)."""
    import numpy as np

    from sea_dist.data.dataset import load_dataset

    ds = load_dataset(str(root))
    users_t = pq.read_table(published_path(output_dir, "embeddings/users/part-00000.parquet"))
    items_t = pq.read_table(published_path(output_dir, "embeddings/items/part-00000.parquet"))
    u_row = {raw: r for r, raw in enumerate(users_t.column("user_id").to_pylist())}
    i_row = {raw: r for r, raw in enumerate(items_t.column("item_id").to_pylist())}
    U = np.asarray(users_t.column("embedding").to_pylist(), dtype=np.float32)
    V = np.asarray(items_t.column("embedding").to_pylist(), dtype=np.float32)
    # item columns in the dataset's index order, user rows likewise
    V = V[[i_row[raw] for raw in ds.item_raw_ids.tolist()]]
    U = U[[u_row[raw] for raw in ds.user_raw_ids.tolist()]]
    train, test = ds.split_edges(0), ds.split_edges(2)
    seen = {}
    for u, i in zip(*train):
        seen.setdefault(int(u), set()).add(int(i))
    relevant = {}
    for u, i in zip(*test):
        if int(u) in seen:
            relevant.setdefault(int(u), set()).add(int(i))
    recall, precision, ndcg, chance = [], [], [], []
    for u, rel in relevant.items():
        scores = U[u] @ V.T
        scores[list(seen[u])] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        hits = np.array([i in rel for i in top], dtype=float)
        recall.append(hits.sum() / len(rel))
        precision.append(hits.sum() / k)
        dcg = (hits / np.log2(np.arange(2, k + 2))).sum()
        ndcg.append(dcg / (1.0 / np.log2(np.arange(2, min(k, len(rel)) + 2))).sum())
        candidates = ds.n_items - len(seen[u])
        chance.append(min(k, candidates) / candidates)
    return {f"recall@{k}": float(np.mean(recall)), f"precision@{k}": float(np.mean(precision)),
            f"ndcg@{k}": float(np.mean(ndcg)), f"chance_recall@{k}": float(np.mean(chance))}


@pytest.mark.slow
def test_two_ray_workers_train_checkpoint_and_resume(tiny_root, tmp_path):
    out = tmp_path / "run"
    ray_tmp = tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")  # Ray's socket paths must stay short
    env = {"SEA_DIST_RAY_TMPDIR": ray_tmp}
    first = run_job(["--output-dir", str(out), "--epochs", "2", f"data.root={tiny_root}", *FAST], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "epoch    1" in first.stdout + first.stderr
    summary = published_summary(out)
    assert summary["mode"] == "sampled" and summary["world_size"] == 2
    assert summary["epochs_run"] == 2 and len(summary["peak_rss_mb_per_worker"]) == 2
    # the published embeddings are the model that was evaluated: the test metrics recomputed
    # by hand from them equal the summary's; the model beats popularity, which beats chance
    # (measured: recall@20 0.4160, popularity 0.2935 (1.42x), chance 0.1430)
    by_hand = _test_metrics_from_export(out, tiny_root)
    test, popular = summary["test"], summary["popularity_test_recall@20"]
    print(f"2 workers, 2 epochs: test recall@20 {test['recall@20']:.4f} (by hand {by_hand['recall@20']:.4f}), "
          f"popularity {popular:.4f}, chance {by_hand['chance_recall@20']:.4f}")
    for key in ("recall@20", "precision@20", "ndcg@20"):
        assert abs(test[key] - by_hand[key]) <= 1e-6, (key, test[key], by_hand[key])
    assert test["recall@20"] >= 1.2 * popular, (test["recall@20"], popular)
    assert popular >= 1.3 * by_hand["chance_recall@20"]
    assert summary["throughput"]["train_edges_per_s_per_worker"] > 0
    assert [r["epoch"] for r in _read_jsonl(out / "metrics.jsonl")] == [0, 1]
    users = pq.read_table(published_path(out, "embeddings/users/part-00000.parquet"))
    items = pq.read_table(published_path(out, "embeddings/items/part-00000.parquet"))
    assert users.num_rows == 400 and items.num_rows == 150
    assert users.schema.field("embedding").type.list_size == 2 * 64

    # --resume continues the same run: epochs 0-1 are not trained again
    second = run_job(["--output-dir", str(out), "--epochs", "3", "--resume", f"data.root={tiny_root}", *FAST], env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "epoch    2" in log and "epoch    0 |" not in log
    assert [r["epoch"] for r in _read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert published_summary(out)["epochs_run"] == 3


@pytest.mark.slow
def test_full_graph_mode_reads_and_writes_s3(tiny_root, moto_s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3})
    fs.put(tiny_root, "e2e-bucket/data", recursive=True)
    canary = "sea-dist-canary-secret-7f3a9c"  # the run's S3 secret: must never appear in any output
    result = run_job(
        [
            "--full-graph",
            "--epochs",
            "2",
            "--output-dir",
            "s3://e2e-bucket/runs/one",
            "data.root=s3://e2e-bucket/data",
            f"data.s3_endpoint_url={moto_s3}",
            f"train.storage_path={tmp_path / 'ckpt'}",
            *FAST,
        ],
        env_extra={"AWS_SECRET_ACCESS_KEY": canary},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads(fs.cat("e2e-bucket/runs/one/MANIFEST.json"))
    summary = json.loads(fs.cat(f"e2e-bucket/runs/one/{manifest['prefix']}/summary.json"))
    assert summary["mode"] == "full_graph" and summary["epochs_run"] == 2
    assert "embeddings/items/part-00000.parquet" in manifest["files"]
    assert "Recall@20" in result.stdout
    # security: the secret is in no published file, checkpoint, metrics line or log
    leaks = [p for p in fs.find("e2e-bucket/runs") if canary.encode() in fs.cat(p)]
    for folder, _dirs, files in os.walk(tmp_path / "ckpt"):
        leaks += [os.path.join(folder, f) for f in files if canary.encode() in open(os.path.join(folder, f), "rb").read()]
    assert leaks == [] and canary not in result.stdout + result.stderr


def test_missing_dataset_root_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_job(["--full-graph", f"data.root={missing}", "--output-dir", str(tmp_path / "o")])
    assert result.returncode != 0
    assert str(missing) in result.stderr and "Traceback" not in result.stderr[-2000:]


def test_unknown_config_key_is_rejected(tmp_path):
    result = run_job(["model.no_such_knob=3"])
    assert result.returncode != 0 and "no_such_knob" in result.stderr
