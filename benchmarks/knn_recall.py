#!/usr/bin/env python
"""Approximate vs exact item-item kNN (cosine): recall@k, time and peak memory, JSON lines.

Features: seeded clustered Gaussians with overlapping clusters (50 topics -> n/50 fine clusters
-> items in a 256-d latent space, linearly mapped to ``dim`` plus isotropic noise); the 4096-d
set is made non-negative (ReLU), like the CNN image features MMRec ships, the 384-d set is
signed, like sentence-embedding text features. Neighbour margins are tight (mean cosine of the
1st and 9th neighbour about 0.70 and 0.67), so recall separates the methods.

Every method runs in its own subprocess (``peak_rss_mb`` is that process's peak, features
included; ``base_rss_mb`` the peak after loading the features). Recall@k is against
:func:`sea_dist.graph.knn.exact_topk_cosine` on all rows when ``n <= --exact-max`` (the exact
run is then one of the lines), otherwise on ``--recall-sample`` random rows scored exactly.
``build_s``/``query_s`` are split where the library separates them; ``total_s`` and ``cpu_s``
(process CPU seconds, less sensitive to a shared machine than wall time) always. Libraries
that are not installed (faiss-cpu, hnswlib, pynndescent) are reported as skipped.

    python benchmarks/knn_recall.py [--n-items 50000] [--dims 384,4096] [--methods ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ALL_METHODS = ("exact", "ivf", "ivf_pca256", "faiss_ivf", "faiss_hnsw", "hnswlib", "pynndescent")


def clustered_features(
    n: int, dim: int, seed: int = 0, *, latent_dim: int = 256, nonneg: bool = False,
    n_topics: int = 50, items_per_cluster: int = 50, spread=(1.0, 0.3, 0.6), noise: float = 0.5,
) -> np.ndarray:
    """float32 ``[n, dim]``: topics -> fine clusters -> items in a latent space, mapped to dim."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // items_per_cluster)
    topics = spread[0] * rng.standard_normal((n_topics, latent_dim)).astype(np.float32)
    centres = topics[rng.integers(0, n_topics, n_clusters)]
    centres += spread[1] * rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    z = centres[rng.integers(0, n_clusters, n)]
    z += spread[2] * rng.standard_normal((n, latent_dim)).astype(np.float32)
    a = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.float32(np.sqrt(latent_dim))
    x = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 16384):  # bounded temporaries
        b = z[i : i + 16384] @ a
        b += noise * rng.standard_normal(b.shape, dtype=np.float32)
        x[i : i + 16384] = np.maximum(b, 0) if nonneg else b
    return x


def _normed(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(0, x.shape[0], 8192):
        b = x[i : i + 8192]
        out[i : i + 8192] = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(method: str, feats_path: str, out_path: str, k: int, seed: int) -> dict:
    """Run one method on the saved features; save indices; return timings (in the subprocess)."""
    x = np.load(feats_path)
    n = x.shape[0]
    base = _rss_mb()
    build = None
    c0, t0 = time.process_time(), time.perf_counter()
    params: dict = {}
    if method == "exact":
        from sea_dist.graph.knn import exact_topk_cosine

        idx = exact_topk_cosine(x, k).numpy()
    elif method in ("ivf", "ivf_pca256"):
        from sea_dist.graph.ann import approximate_topk_cosine

        params = {"nprobe": 8, "nlist": int(round(np.sqrt(n)))}
        if method == "ivf_pca256":
            params.update(reduce_dim=256, rerank=4)
        idx = approximate_topk_cosine(x, k, seed=seed, **params).numpy()
    elif method in ("faiss_ivf", "faiss_hnsw"):
        import faiss

        xn = _normed(x)
        d = xn.shape[1]
        if method == "faiss_ivf":
            params = {"nlist": int(round(np.sqrt(n))), "nprobe": 8, "niter": 10}
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
            index.cp.seed, index.cp.niter = seed, params["niter"]
            index.train(xn)
            index.add(xn)
            index.nprobe = params["nprobe"]
        else:
            params = {"M": 32, "efConstruction": 100, "efSearch": 64}
            index = faiss.IndexHNSWFlat(d, params["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params["efConstruction"]
            index.add(xn)
            index.hnsw.efSearch = params["efSearch"]
        build = time.perf_counter() - t0
        _, idx = index.search(xn, k)
    elif method == "hnswlib":
        import hnswlib

        xn = _normed(x)
        params = {"M": 16, "ef_construction": 100, "ef": 64}
        index = hnswlib.Index(space="ip", dim=xn.shape[1])
        index.init_index(max_elements=n, ef_construction=params["ef_construction"], M=params["M"], random_seed=seed)
        index.add_items(xn)
        index.set_ef(params["ef"])
        build = time.perf_counter() - t0
        idx, _ = index.knn_query(xn, k=k)
    elif method == "pynndescent":
        import pynndescent

        params = {"n_neighbors": 20, "metric": "cosine"}
        nnd = pynndescent.NNDescent(x, random_state=seed, low_memory=True, n_jobs=-1, **params)
        idx = nnd.neighbor_graph[0][:, :k]
        build = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown method {method!r}")
    total = time.perf_counter() - t0
    np.save(out_path, np.asarray(idx, dtype=np.int64))
    return {
        "params": params,
        "build_s": None if build is None else round(build, 2),
        "query_s": None if build is None else round(total - build, 2),
        "total_s": round(total, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "base_rss_mb": round(base),
        "peak_rss_mb": round(_rss_mb()),
    }


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(set(a) & set(b)) for a, b in zip(found[:, :k].tolist(), truth.tolist()))
    return hits / (truth.shape[0] * k)


def _sampled_truth(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    import torch

    xn = torch.from_numpy(_normed(x))
    q = xn[torch.from_numpy(rows)]
    best_v = torch.full((rows.size, k), -np.inf)
    best_i = torch.zeros((rows.size, k), dtype=torch.int64)
    for c in range(0, xn.shape[0], 16384):
        v, i = torch.topk(q @ xn[c : c + 16384].T, min(k, xn[c : c + 16384].shape[0]), dim=1)
        cv, ci = torch.cat([best_v, v], 1), torch.cat([best_i, i + c], 1)
        best_v, p = torch.topk(cv, k, dim=1)
        best_i = torch.gather(ci, 1, p)
    return best_i.numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-items", type=int, default=50_000)
    p.add_argument("--dims", default="384,4096")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-max", type=int, default=60_000, help="largest n with a full exact run")
    p.add_argument("--recall-sample", type=int, default=2000, help="rows scored exactly above --exact-max")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per method")
    p.add_argument("--worker", nargs=5, metavar=("METHOD", "FEATS", "OUT", "K", "SEED"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        m, feats, out, k, seed = a.worker
        print(json.dumps(worker(m, feats, out, int(k), int(seed))), flush=True)
        return 0

    methods = [m for m in a.methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="knn_bench_") as tmp:
        for dim in [int(d) for d in a.dims.split(",")]:
            nonneg = dim >= 1024
            x = clustered_features(a.n_items, dim, a.seed, nonneg=nonneg)
            feats = os.path.join(tmp, f"x{dim}.npy")
            np.save(feats, x)
            full_truth = a.n_items <= a.exact_max
            truth, rows = None, None
            if not full_truth:
                rows = np.random.default_rng(a.seed + 1).choice(a.n_items, min(a.recall_sample, a.n_items), replace=False)
                truth = _sampled_truth(x, rows, a.k)
            todo = [m for m in methods if m != "exact"]
            if full_truth:
                todo = ["exact"] + todo  # ground truth first
            elif "exact" in methods:
                print(json.dumps({"method": "exact", "dim": dim, "n_items": a.n_items, "skipped": "n > --exact-max"}), flush=True)
            del x
            for m in todo:
                if m == "ivf_pca256" and dim <= 256:
                    continue
                out = os.path.join(tmp, f"{m}{dim}.npy")
                rec = {"method": m, "n_items": a.n_items, "dim": dim, "k": a.k,
                       "features": "clustered, non-negative" if nonneg else "clustered, signed"}
                try:
                    proc = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--worker", m, feats, out, str(a.k), str(a.seed)],
                        capture_output=True, text=True, timeout=a.timeout,
                    )
                except subprocess.TimeoutExpired:
                    print(json.dumps({**rec, "skipped": f"timeout {a.timeout}s"}), flush=True)
                    continue
                if proc.returncode != 0:
                    err = proc.stderr.strip().splitlines()[-1:] or ["?"]
                    reason = "not installed" if "ModuleNotFoundError" in err[0] else err[0]
                    print(json.dumps({**rec, "skipped": reason}), flush=True)
                    continue
                rec.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                idx = np.load(out)
                if full_truth:
                    if m == "exact":
                        truth = idx
                    rec[f"recall@{a.k}"] = round(recall_at_k(idx, truth), 4)
                else:
                    rec[f"recall@{a.k}"] = round(recall_at_k(idx[rows], truth), 4)
                    rec["recall_rows"] = int(rows.size)
                rec["load_avg_1m"] = round(os.getloadavg()[0], 2)
                print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
