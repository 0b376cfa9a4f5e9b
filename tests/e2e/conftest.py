import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = SyntheticSpec(
    n_users=400, n_items=150, n_interactions=5000, modalities={"image": 16, "text": 8}, name="tiny-e2e"
)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_synthetic(TINY, str(tmp_path_factory.mktemp("tiny-e2e") / "data"))


def run_job(args, env_extra=None, timeout=600, cwd=REPO):
    """Runs ``python jobs/train.py ARGS`` as a user would; returns the CompletedProcess."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.pop("RAY_ADDRESS", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def published_summary(output_dir):
    """summary.json of the model published under ``output_dir`` (read through the manifest)."""
    from sea_dist.ops.publish import Publisher

    return Publisher(str(output_dir)).read_published_json("summary.json")


def published_path(output_dir, name):
    from sea_dist.ops.publish import Publisher

    return Publisher(str(output_dir)).published_file(name)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def metrics_from_export(output_dir, root, k=20):
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
