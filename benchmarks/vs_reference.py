#!/usr/bin/env python
"""Side by side with the authors' code (bruno686/SEA): seconds per epoch and Recall@20.

    python benchmarks/vs_reference.py --reference-repo PATH [--epochs 3] [--users N --items M] [--threads T]
        [--modes authors,full_graph,sampled] [--python PY] [--out benchmarks/results/vs_reference.jsonl]
    python benchmarks/vs_reference.py golden --reference-repo PATH [--out tests/data/golden/reference.json]
    python benchmarks/vs_reference.py table [--out benchmarks/results/vs_reference.jsonl] [--doc docs/results.md]

``PATH`` is the user's own checkout of https://github.com/bruno686/SEA (never vendored here).
The benchmark builds an MMRec-format dataset at MMRec's widths (image 4096 + text 384) on the
real Amazon Baby interaction graph (``datasets/amazon-baby``: 19,445 users x 7,050 items, its
own split; ``--users/--items`` take a deterministic subsample for a quick run) with generated
features that carry signal (item factors of the training matrix, a random projection per
modality, plus noise), then trains, one after the other on the same cores with the same seed,
lr, batch and epoch count: the authors' code, our full-graph mode (one process) and our sampled
mode (2 Ray workers, 1 CPU each). One JSON line per run (seconds per epoch for training and for
evaluation, validation Recall@20 per epoch, wall time to reach the authors' best validation
Recall@20), then one comparison line (ratios to the authors' seconds per epoch; goal <= 0.5x
at >= 0.98x their Recall@20 at the same epoch). ``--threads`` sets the torch threads of the two
one-process runs alike (theirs and our full-graph mode); on a machine shared with other work,
2 threads made the authors' code an order of magnitude slower than 1 (their 50-step CLUB fit is
hundreds of tiny kernels, each paying thread wake-ups), so say which you used.
Full Baby at 1 thread costs the authors' code tens of minutes per epoch on 2 cores (every step
runs a 4096 x 4096 Linear over all 7,050 items, forward and backward); ``--users/--items`` keep
a quick run quick.

``golden`` runs the authors' code for 3 epochs (one step each) on the tiny fixture of
``tests/golden_fixture.py`` with the fixture's initial parameters loaded into their model and
writes what it produced (first steps' loss terms, the triples and CLUB permutations drawn, Q after
each epoch, validation metrics and top-20 lists) to ``tests/data/golden/reference.json``; the unit
test ``tests/unit/test_golden_reference.py`` replays it through our full-graph step. ``table``
renders the last run in the results file into its own section of ``docs/results.md``.

Extra dependencies, for the authors' code only (ours needs none of them): torch-geometric,
pandas, scipy, pyyaml, lmdb, pillow, matplotlib. Keep your torch:
``pip install torch-geometric lmdb pillow matplotlib`` pulls no torch (use ``--no-deps`` for any
package that would). ``--python`` runs their code with another interpreter, e.g. a virtual
environment made with ``python -m venv --system-site-packages``. wandb and torchvision are not
needed: their code imports them, and do-nothing stand-ins are put on its path.

What is changed, only in a temporary copy of ``PATH/src`` (the user's files are never touched):

- ``models/sea.py`` -> ``SEA.py`` link (their ``get_model`` imports the lower-cased name);
- ``configs/dataset/<name>.yaml``: a copy of their ``baby.yaml`` naming our ``.inter`` file;
- a runner script that calls their ``quick_start`` unchanged, with ``epochs`` and ``data_path``
  in its config dict, and patches in memory: the ``result_embed*`` scratch attributes become
  plain tensors after ``SEA.__init__`` (on a GPU ``.to(cuda)`` does that; on a CPU they stay
  ``nn.Parameter`` s and the forward's reassignment fails), and timing/capture hooks around their
  trainer's epoch, evaluation and loss methods (no computation is replaced).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BABY_DIR = os.path.join(REPO, "datasets", "amazon-baby")
GOLDEN_OUT = os.path.join(REPO, "tests", "data", "golden", "reference.json")
RESULTS = os.path.join(REPO, "benchmarks", "results", "vs_reference.jsonl")
DIMS = {"image": 4096, "text": 384}  # MMRec's widths; the authors' SEA.py hard-codes them
METRIC = "recall@20"


def emit(record: dict, out: str | None = None) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


# ---- the dataset -----------------------------------------------------------------------------
def subsample_graph(
    users: np.ndarray, items: np.ndarray, splits: np.ndarray, n_users: int, n_items: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n_items`` most interacted items, then ``n_users`` users (seeded) among those with a
    training edge and >= 3 edges on them; ids re-numbered 0.. in ascending order of the old ones."""
    keep = np.ones(len(users), dtype=bool)
    if n_items:
        degree = np.bincount(items)
        top = np.sort(np.argsort(-degree, kind="stable")[:n_items])
        keep &= np.isin(items, top)
    if n_users:
        u, s = users[keep], splits[keep]
        total = np.bincount(u, minlength=int(users.max()) + 1)
        train = np.bincount(u[s == 0], minlength=int(users.max()) + 1)
        eligible = np.flatnonzero((total >= 3) & (train >= 1))
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(eligible, size=min(n_users, len(eligible)), replace=False))
        keep &= np.isin(users, chosen)
    users, items, splits = users[keep], items[keep], splits[keep]
    # users whose training edges were all cut would only be skipped by both evaluators
    has_train = np.isin(users, np.unique(users[splits == 0]))
    users, items, splits = users[has_train], items[has_train], splits[has_train]
    return np.unique(users, return_inverse=True)[1], np.unique(items, return_inverse=True)[1], splits


def item_factors(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, rank: int, seed: int) -> np.ndarray:
    """Unit-variance item factors of the binary training matrix (truncated SVD, fixed start
    vector so the result is deterministic); items without training edges get zeros."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    matrix = sp.csr_matrix((np.ones(len(users), np.float64), (users, items)), shape=(n_users, n_items))
    rank = max(1, min(rank, min(n_users, n_items) - 1))
    v0 = np.random.default_rng(seed).standard_normal(min(n_users, n_items))
    _, s, vt = svds(matrix, k=rank, v0=v0, solver="arpack")
    factors = (vt.T * np.sqrt(s)).astype(np.float64)
    factors /= factors.std(axis=0, keepdims=True) + 1e-12
    return factors


def co_interaction_graph(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, top: int = 200) -> dict:
    """What MMRec-family loaders expect in ``user_graph_dict.npy``: per user, up to ``top`` other
    users ranked by shared training items, ``{u: [[users...], [counts...]]}``. SEA reads it every
    epoch (``pre_epoch_processing``) but never uses it in the loss; it exists so their epoch
    costs what it costs on their own data."""
    import scipy.sparse as sp

    m = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    shared = (m @ m.T).tocsr()
    shared.setdiag(0)
    shared.eliminate_zeros()
    graph = {}
    for u in range(n_users):
        lo, hi = shared.indptr[u], shared.indptr[u + 1]
        cols, vals = shared.indices[lo:hi], shared.data[lo:hi]
        order = np.lexsort((cols, -vals))[:top]
        graph[u] = [cols[order].astype(int).tolist(), vals[order].astype(float).tolist()]
    return graph


def write_mmrec(
    out_dir: str,
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    splits: np.ndarray,
    features: dict[str, np.ndarray],
    user_graph: dict | None,
) -> None:
    """MMRec's files: ``<name>.inter`` (TAB, header ``userID itemID x_label``), ``image_feat.npy``,
    ``text_feat.npy`` (row i = item i) and ``user_graph_dict.npy``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.inter"), "w") as f:
        f.write("userID\titemID\tx_label\n")
        for u, i, s in zip(users.tolist(), items.tolist(), splits.tolist()):
            f.write(f"{u}\t{i}\t{s}\n")
    for modality, file in (("image", "image_feat.npy"), ("text", "text_feat.npy")):
        np.save(os.path.join(out_dir, file), np.ascontiguousarray(features[modality], dtype=np.float32))
    if user_graph is not None:
        np.save(os.path.join(out_dir, "user_graph_dict.npy"), user_graph, allow_pickle=True)


def build_benchmark_dataset(
    out_dir: str, baby_dir: str, n_users: int, n_items: int, seed: int, rank: int, noise: float
) -> dict:
    """The Baby graph (optionally subsampled) in MMRec's format with generated features:
    ``x_m = F R_m / sqrt(rank) + noise * N(0, 1)``, F the training matrix's item factors and R_m
    a Gaussian projection per modality, so SEA has something to learn from either modality."""
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(baby_dir, "interactions.parquet"))
    users = table.column("user_id").to_numpy().astype(np.int64)
    items = table.column("item_id").to_numpy().astype(np.int64)
    splits = table.column("split").to_numpy().astype(np.int8)
    if n_users or n_items:
        users, items, splits = subsample_graph(users, items, splits, n_users, n_items, seed)
    U, I = int(users.max()) + 1, int(items.max()) + 1
    train = splits == 0
    factors = item_factors(users[train], items[train], U, I, rank, seed)
    rng = np.random.default_rng(seed + 1)
    features = {}
    for modality, dim in DIMS.items():
        projection = rng.standard_normal((factors.shape[1], dim)) / np.sqrt(factors.shape[1])
        features[modality] = (factors @ projection + noise * rng.standard_normal((I, dim))).astype(np.float32)
    graph = co_interaction_graph(users[train], items[train], U, I)
    write_mmrec(out_dir, "babygen", users, items, splits, features, graph)
    info = {
        "name": "babygen",
        "source": "datasets/amazon-baby interactions.parquet (its split as x_label)",
        "n_users": U,
        "n_items": I,
        "n_interactions": int(len(users)),
        "splits": [int((splits == k).sum()) for k in range(3)],
        "features": {m: [I, d] for m, d in DIMS.items()},
        "feature_recipe": f"train-matrix item factors (rank {factors.shape[1]}) x Gaussian projection + {noise} x N(0,1)",
        "subsample": {"users": n_users, "items": n_items},
        "seed": seed,
    }
    with open(os.path.join(out_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


# ---- the authors' code in a temporary copy ---------------------------------------------------
WANDB_STUB = '''"""Do-nothing stand-in for wandb, written by sea_dist's benchmarks/vs_reference.py."""
def login(*args, **kwargs):
    return None
def init(*args, **kwargs):
    return None
def log(*args, **kwargs):
    return None
'''

TORCHVISION_FUNCTIONAL_STUB = '''"""Stand-in for torchvision (only its image transforms are imported, never used by SEA)."""
def pad(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: image transforms are not available")
def resize(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: image transforms are not available")
'''

TORCHVISION_TRANSFORMS_STUB = '''"""Stand-in for torchvision.transforms."""
from . import functional  # noqa: F401
class Compose:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("torchvision stand-in: image transforms are not available")
'''

# The runner: our code, run inside the temporary copy with their interpreter. It calls their
# quick_start unchanged; every hook below wraps one of their methods and calls the original.
RUNNER = r'''"""Written by sea_dist's benchmarks/vs_reference.py into a temporary copy of the authors'
code. Runs their quick_start unchanged; hooks time their epochs and record what the golden test
needs. In-memory change: result_embed* become plain tensors (GPU semantics on a CPU)."""
import argparse
import importlib
import json
import os
import sys
import time
from types import SimpleNamespace


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--params", default="")
    p.add_argument("--capture", default="")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    started = time.perf_counter()
    src = os.path.dirname(os.path.abspath(__file__))
    os.chdir(src)
    sys.path.insert(0, src)
    import numpy as np
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    sea_modules = [importlib.import_module("models.sea"), importlib.import_module("models.SEA")]
    trainer_mod = importlib.import_module("common.trainer")
    from utils.topk_evaluator import TopKEvaluator
    from utils.quick_start import quick_start

    events = open(a.events, "a")

    def emit(record):
        events.write(json.dumps(record) + "\n")
        events.flush()

    params = dict(np.load(a.params)) if a.params else None
    loaded = []

    def load_params(module, prefix):
        with torch.no_grad():
            for name, tensor in module.named_parameters():
                key = prefix + name
                if key in params:
                    value = torch.from_numpy(params[key]).to(tensor.dtype)
                    if value.shape != tensor.shape:
                        raise SystemExit(f"{key}: fixture shape {tuple(value.shape)} != {tuple(tensor.shape)}")
                    tensor.copy_(value)
                    loaded.append(key)

    capture = {"steps": [], "epochs": []}
    state = {"in_club": False, "step": None, "epoch_start": None, "evals": [], "topk": []}
    original_randperm = torch.randperm

    def randperm(*args, **kwargs):
        out = original_randperm(*args, **kwargs)
        if state["in_club"] and state["step"] is not None:
            state["step"]["club_permutations"].append(out.tolist())
        return out

    if a.capture:
        torch.randperm = randperm

    for mod in sea_modules:
        sea_cls, club_cls = mod.SEA, mod.CLUBSample
        if getattr(sea_cls, "_vs_reference_patched", False):
            continue
        sea_cls._vs_reference_patched = True

        def sea_init(self, *args, _orig=sea_cls.__init__, **kwargs):
            _orig(self, *args, **kwargs)
            for name in [n for n in self._parameters if n.startswith("result_embed")]:
                setattr(self, name, self._parameters.pop(name).detach())
            if params is not None:
                load_params(self, "model.")

        def club_init(self, *args, _orig=club_cls.__init__, **kwargs):
            _orig(self, *args, **kwargs)
            if params is not None:
                load_params(self, "club.")

        def pre_epoch(self, _orig=sea_cls.pre_epoch_processing):
            state["epoch_start"] = time.perf_counter()
            return _orig(self)

        def forward(self, interaction, _orig=sea_cls.forward):
            out = _orig(self, interaction)
            if state["step"] is not None:
                state["step"]["pos_scores"] = out[0].detach().tolist()
                state["step"]["neg_scores"] = out[1].detach().tolist()
            return out

        def solosim(self, *args, _orig=sea_cls.Solosimloss, **kwargs):
            out = _orig(self, *args, **kwargs)
            if state["step"] is not None:
                state["step"]["solosim"] = float(out)
            return out

        def calculate_loss(self, interaction, club, _orig=sea_cls.calculate_loss):
            step = None
            if a.capture:
                step = {
                    "users": interaction[0].tolist(),
                    "pos_items": interaction[1].tolist(),
                    "neg_items": interaction[2].tolist(),
                    "club_bounds": [],
                    "club_permutations": [],
                }
                state["step"] = step
            loss, views = _orig(self, interaction, club)
            if step is not None:
                pos = torch.tensor(step["pos_scores"], dtype=torch.float64)
                neg = torch.tensor(step["neg_scores"], dtype=torch.float64)
                step["bpr_from_scores"] = float(-torch.log2(torch.sigmoid(pos - neg)).mean())
                step["total"] = float(loss)
                step["ureg"], step["alpha_contrast"] = self.ureg, self.alpha_contrast
                step["club_views"] = {
                    name: float(t.detach().double().norm()) for name, t in zip(("t_trans1", "v_trans1", "t_trans2", "v_trans2"), views)
                }
                capture["steps"].append(step)
                state["step"] = None
            return loss, views

        def club_forward(self, x, y, _orig=club_cls.forward):
            state["in_club"] = True
            try:
                out = _orig(self, x, y)
            finally:
                state["in_club"] = False
            if state["step"] is not None:
                state["step"]["club_bounds"].append(float(out))
            return out

        sea_cls.__init__ = sea_init
        club_cls.__init__ = club_init
        sea_cls.pre_epoch_processing = pre_epoch
        sea_cls.forward = forward
        sea_cls.Solosimloss = solosim
        sea_cls.calculate_loss = calculate_loss
        club_cls.forward = club_forward

    Trainer = trainer_mod.Trainer

    def fit(self, *args, _orig=Trainer.fit, **kwargs):
        state["fit"] = time.perf_counter()
        emit({"event": "setup", "setup_s": state["fit"] - started, "threads": torch.get_num_threads(),
              "torch": torch.__version__})
        return _orig(self, *args, **kwargs)

    def train_epoch(self, train_data, epoch_idx, loss_func=None, _orig=Trainer._train_epoch):
        total, batches = _orig(self, train_data, epoch_idx, loss_func)
        state["train_end"] = time.perf_counter()
        state["epoch"], state["evals"], state["topk"] = epoch_idx, [], []
        state["loss"] = float(total) / max(len(batches), 1) if batches else None
        if a.capture:
            capture["epochs"].append({
                "epoch": epoch_idx,
                "club": {k: v.detach().double().tolist() for k, v in self.club.state_dict().items()},
                "param_norms": {k: float(v.detach().double().norm()) for k, v in self.model.named_parameters()},
            })
        return total, batches

    def valid_epoch(self, data, _orig=Trainer._valid_epoch):
        score, result = _orig(self, data)
        state["evals"].append(result)
        if len(state["evals"]) == 2:  # their fit evaluates valid, then test, every epoch
            now = time.perf_counter()
            emit({"event": "epoch", "epoch": state["epoch"], "train_s": state["train_end"] - state["epoch_start"],
                  "eval_s": now - state["train_end"], "elapsed_s": now - state["fit"], "loss": state["loss"],
                  "valid": state["evals"][0], "test": state["evals"][1]})
            if a.capture:
                capture["epochs"][-1]["valid"] = state["evals"][0]
                capture["epochs"][-1]["test"] = state["evals"][1]
                capture["epochs"][-1]["topk"] = state["topk"]
        return score, result

    def evaluate(self, batch_matrix_list, eval_data, *args, _orig=TopKEvaluator.evaluate, **kwargs):
        if a.capture:
            state["topk"].append({"users": eval_data.get_eval_users().tolist(),
                                  "topk": torch.cat(batch_matrix_list, dim=0).tolist()})
        return _orig(self, batch_matrix_list, eval_data, *args, **kwargs)

    Trainer.fit, Trainer._train_epoch, Trainer._valid_epoch = fit, train_epoch, valid_epoch
    TopKEvaluator.evaluate = evaluate

    # main.py's argparse defaults (temp is overridden by the model config's 0.2 in SEA.__init__)
    args = SimpleNamespace(model="SEA", dataset=a.dataset, mg=False, alpha_contrast=0.012, temp=0.046,
                           hidden_dim=64, out_dim=32, reg_weight=0, ureg=0.006, gpu=0)
    config = {"gpu_id": 0, "epochs": a.epochs, "data_path": a.data_path.rstrip("/") + "/"}
    quick_start(model="SEA", dataset=a.dataset, config_dict=config, args=args, save_model=True, mg=False)
    if params is not None:
        missing = sorted(set(params) - set(loaded))
        if missing:
            raise SystemExit(f"fixture parameters not found in the authors' model: {missing}")
    if a.capture:
        capture["loaded_parameters"] = sorted(set(loaded))
        with open(a.capture, "w") as f:
            json.dump(capture, f)
    emit({"event": "done", "wall_s": time.perf_counter() - started})


if __name__ == "__main__":
    main()
'''


def prepare_reference_copy(reference_repo: str, workdir: str, dataset: str) -> str:
    """A temporary copy of ``reference_repo/src`` made runnable here; returns its src dir."""
    src = os.path.join(reference_repo, "src")
    if not os.path.isfile(os.path.join(src, "models", "SEA.py")):
        raise SystemExit(f"{reference_repo}: not a checkout of bruno686/SEA (no src/models/SEA.py)")
    copy = os.path.join(workdir, "reference", "src")
    shutil.rmtree(os.path.dirname(copy), ignore_errors=True)
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "log", "saved", "recommend_topk"))
    lower = os.path.join(copy, "models", "sea.py")
    if not os.path.exists(lower):  # a case-insensitive file system already finds SEA.py
        os.symlink("SEA.py", lower)
    with open(os.path.join(copy, "configs", "dataset", "baby.yaml")) as f:
        baby = f.read()
    if "baby.inter" not in baby:
        raise SystemExit(f"{reference_repo}: configs/dataset/baby.yaml does not name baby.inter")
    with open(os.path.join(copy, "configs", "dataset", f"{dataset}.yaml"), "w") as f:
        f.write(baby.replace("baby.inter", f"{dataset}.inter"))
    stubs = os.path.join(workdir, "reference", "stubs")
    os.makedirs(os.path.join(stubs, "torchvision", "transforms"), exist_ok=True)
    files = {
        "wandb.py": WANDB_STUB,
        "torchvision/__init__.py": '"""Stand-in for torchvision."""\n',
        "torchvision/transforms/__init__.py": TORCHVISION_TRANSFORMS_STUB,
        "torchvision/transforms/functional.py": TORCHVISION_FUNCTIONAL_STUB,
    }
    for rel, text in files.items():
        with open(os.path.join(stubs, rel), "w") as f:
            f.write(text)
    with open(os.path.join(copy, "_vs_reference_runner.py"), "w") as f:
        f.write(RUNNER)
    return copy


def run_authors(
    reference_repo: str,
    python: str,
    workdir: str,
    data_dir: str,
    dataset: str,
    epochs: int,
    params: str = "",
    capture: str = "",
    threads: int = 0,
) -> tuple[list[dict], float]:
    """Their quick_start on ``data_dir/<dataset>.inter`` for ``epochs``; (epoch events, wall s)."""
    copy = prepare_reference_copy(reference_repo, workdir, dataset)
    events = os.path.join(workdir, "reference_events.jsonl")
    if os.path.exists(events):
        os.remove(events)
    for cached in ("mm_adj_10.pt",):  # their kNN cache: rebuilt, so it belongs to these features
        if os.path.exists(os.path.join(data_dir, cached)):
            os.remove(os.path.join(data_dir, cached))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.join(workdir, "reference", "stubs"), env.get("PYTHONPATH", "")) if p
    )
    env["WANDB_MODE"] = "disabled"
    # their data_path is joined with the dataset name: point it at data_dir's parent
    parent, name = os.path.split(os.path.abspath(data_dir))
    if name != dataset:
        raise SystemExit(f"internal: data dir {data_dir} must be named {dataset}")
    cmd = [python, os.path.join(copy, "_vs_reference_runner.py"), "--dataset", dataset,
           "--data-path", parent, "--epochs", str(epochs), "--events", events]
    if params:
        cmd += ["--params", params]
    if capture:
        cmd += ["--capture", capture]
    if threads:
        cmd += ["--threads", str(threads)]
    log = os.path.join(workdir, "reference_stdout.log")
    t0 = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"the authors' code failed (exit {rc}); last output:\n{tail}")
    with open(events) as f:
        return [json.loads(line) for line in f if line.strip()], wall


# ---- ours --------------------------------------------------------------------------------------
def run_ours(
    root: str, mode: str, epochs: int, workers: int, seed: int, workdir: str, threads: int = 0
) -> tuple[dict, list[dict], float]:
    """Our trainer in a fresh process (same isolation as theirs); (summary, epoch records, wall s).
    ``threads`` applies to the full-graph process (sampled workers run 1 thread each)."""
    spec = {"root": root, "mode": mode, "epochs": epochs, "workers": workers, "seed": seed,
            "threads": threads, "workdir": os.path.join(workdir, f"ours_{mode}")}
    shutil.rmtree(spec["workdir"], ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_ours", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"our {mode} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["summary"], result["history"], wall


def _ours_main(spec: dict) -> None:
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import logging

    import torch

    from _common import train

    logging.basicConfig(level=logging.WARNING)
    if spec["threads"] and spec["mode"] == "full_graph":  # one process: the same threads as theirs
        torch.set_num_threads(spec["threads"])
    overrides = {
        "data.root": spec["root"],
        "train.full_graph": spec["mode"] == "full_graph",
        "train.num_workers": spec["workers"],
        "train.cpus_per_worker": 1,
        "train.epochs": spec["epochs"],
        "train.patience": spec["epochs"] + 1,
        "train.seed": spec["seed"],
    }
    threads = torch.get_num_threads()
    summary, history = train(overrides, spec["workdir"], with_history=True)
    summary["torch_threads_driver"] = threads
    print(json.dumps({"summary": summary, "history": history}, default=str))


class LoadSampler:
    """The machine's 1-minute load average every few seconds while a run lasts: on a shared
    machine it says how much of the cores a run really had."""

    def __init__(self, every_s: float = 5.0):
        import threading

        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self.samples.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"load_avg_mean": round(float(np.mean(self.samples)), 2), "load_avg_max": round(float(np.max(self.samples)), 2)}


# ---- the comparison ---------------------------------------------------------------------------
def wall_to_reach(epochs: list[dict], target: float | None) -> float | None:
    """Training + evaluation seconds, summed from the first epoch, until validation Recall@20
    (rounded to 4 decimals, as MMRec reports it) first reaches ``target``."""
    if target is None:
        return None
    elapsed = 0.0
    for e in epochs:
        elapsed += e["train_s"] + e["eval_s"]
        if round(e["valid"], 4) >= round(target, 4):
            return round(elapsed, 2)
    return None


def record(impl: str, mode: str, epochs: list[dict], wall_s: float, extra: dict) -> dict:
    n = max(len(epochs), 1)
    valid = [round(e["valid"], 4) for e in epochs]
    return {
        "benchmark": "vs_reference",
        "impl": impl,
        "mode": mode,
        "epochs": len(epochs),
        "train_s_per_epoch": round(sum(e["train_s"] for e in epochs) / n, 2),
        "eval_s_per_epoch": round(sum(e["eval_s"] for e in epochs) / n, 2),
        "train_s_by_epoch": [round(e["train_s"], 2) for e in epochs],
        f"valid_{METRIC}_by_epoch": valid,
        f"best_valid_{METRIC}": max(valid) if valid else None,
        "process_wall_s": round(wall_s, 1),
        **extra,
    }


def command_line(a: argparse.Namespace) -> str:
    """How this run was started, with the user's paths as placeholders."""
    parts = ["python benchmarks/vs_reference.py --reference-repo PATH", f"--epochs {a.epochs}"]
    if a.users or a.items:
        parts.append(f"--users {a.users} --items {a.items}")
    if a.threads:
        parts.append(f"--threads {a.threads}")
    if a.modes != "authors,full_graph,sampled":
        parts.append(f"--modes {a.modes}")
    for flag, value, default in (("--workers", a.workers, 2), ("--seed", a.seed, 999), ("--rank", a.rank, 32), ("--noise", a.noise, 1.0)):
        if value != default:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def bench(a: argparse.Namespace) -> None:
    workdir = a.workdir or tempfile.mkdtemp(prefix="sea_vs_reference_")
    data_dir = os.path.join(workdir, "data", "babygen")
    info = build_benchmark_dataset(data_dir, a.baby_dir, a.users, a.items, a.seed, a.rank, a.noise)
    print(f"dataset: {json.dumps(info)}", file=sys.stderr, flush=True)
    modes = a.modes.split(",")
    common = {
        "command": command_line(a),
        "dataset": {k: info[k] for k in ("n_users", "n_items", "n_interactions", "splits", "subsample")},
        "seed": a.seed,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    runs: dict[str, dict] = {}
    sea_dist_root = ""
    for mode in modes:
        if mode != "authors" and not sea_dist_root:
            from sea_dist.sources.mmrec import import_mmrec

            sea_dist_root = import_mmrec(data_dir, os.path.join(workdir, "sea_dist_root"))
        with LoadSampler() as load:
            if mode == "authors":
                events, wall = run_authors(a.reference_repo, a.python, workdir, data_dir, "babygen", a.epochs,
                                           threads=a.threads)
            else:
                summary, history, wall = run_ours(sea_dist_root, mode, a.epochs, a.workers, a.seed, workdir, a.threads)
        if mode == "authors":
            setup = next(e for e in events if e["event"] == "setup")
            epochs = [
                {"train_s": e["train_s"], "eval_s": e["eval_s"], "valid": e["valid"]["recall@20"]}
                for e in events if e["event"] == "epoch"
            ]
            rec = record("authors", "full_graph", epochs, wall,
                         {**common, **load.summary(), "setup_s": round(setup["setup_s"], 1), "torch_threads": setup["threads"]})
        else:
            epochs = [{"train_s": h["train_s"], "eval_s": h["eval_s"], "valid": h["valid"][METRIC]} for h in history]
            rec = record("sea_dist", mode, epochs, wall, {
                **common,
                **load.summary(),
                "world_size": summary["world_size"],
                "club_fit_s_per_epoch": round(summary["throughput"]["club_fit_s_per_epoch"], 2),
                "torch_threads": summary.get("torch_threads_driver") if mode == "full_graph" else 1,
            })
        rec["_epochs"] = epochs
        runs[mode] = rec
        emit({k: v for k, v in rec.items() if not k.startswith("_")}, a.out)
    if "authors" not in runs:
        return
    ref = runs["authors"]
    target = ref[f"best_valid_{METRIC}"]
    comparison = {"benchmark": "vs_reference", "comparison": True, "epochs": a.epochs, **common,
                  "authors_train_s_per_epoch": ref["train_s_per_epoch"], f"authors_best_valid_{METRIC}": target,
                  "authors_wall_to_best_s": wall_to_reach(ref["_epochs"], target)}
    for mode in modes:
        if mode == "authors":
            continue
        r = runs[mode]
        per_epoch = [
            (o["valid"] / t["valid"]) if t["valid"] else None
            for o, t in zip(r["_epochs"], ref["_epochs"])
        ]
        speed = r["train_s_per_epoch"] / ref["train_s_per_epoch"] if ref["train_s_per_epoch"] else None
        worst = min((x for x in per_epoch if x is not None), default=None)
        comparison[mode] = {
            "train_s_per_epoch_over_authors": round(speed, 3) if speed is not None else None,
            "recall_over_authors_by_epoch": [round(x, 4) if x is not None else None for x in per_epoch],
            "wall_to_authors_best_s": wall_to_reach(r["_epochs"], target),
            "goal_met": bool(speed is not None and speed <= 0.5 and worst is not None and worst >= 0.98),
        }
    emit(comparison, a.out)
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- golden --------------------------------------------------------------------------------------
def golden(a: argparse.Namespace) -> None:
    """Run the authors' code on the golden fixture and write what it produced."""
    sys.path.insert(0, REPO)
    from tests import golden_fixture as gf

    workdir = a.workdir or tempfile.mkdtemp(prefix="sea_golden_")
    data_dir = os.path.join(workdir, "data", gf.NAME)
    fixture = gf.build_fixture()
    gf.write_mmrec(fixture, data_dir)
    params_path = os.path.join(workdir, "params.npz")
    np.savez(params_path, **gf.reference_parameters(fixture))
    capture = os.path.join(workdir, "capture.json")
    # one epoch more than the test trains: the authors evaluate the representations of their
    # epoch's last training forward, so their 3rd evaluation is of the parameters after 2 steps
    events, wall = run_authors(a.reference_repo, a.python, workdir, data_dir, gf.NAME, gf.EPOCHS + 1,
                               params=params_path, capture=capture)
    with open(capture) as f:
        captured = json.load(f)
    commit = ""
    git_dir = os.path.join(a.reference_repo, ".git")
    if os.path.exists(git_dir):
        commit = subprocess.run(["git", "-C", a.reference_repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    setup = next(e for e in events if e["event"] == "setup")
    out = {
        "produced_by": "python benchmarks/vs_reference.py golden --reference-repo PATH",
        "reference_commit": commit or a.reference_commit,
        "torch": setup["torch"],
        "fixture": gf.describe(fixture),
        **captured,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {a.out} ({wall:.1f}s); first step: total {captured['steps'][0]['total']:.6f}", file=sys.stderr)
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


TABLE_START, TABLE_END = "<!-- vs_reference:start -->", "<!-- vs_reference:end -->"


def _run_groups(rows: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(comparison line, its run lines) for every complete benchmark run, oldest first."""
    groups, pending = [], []
    for r in rows:
        if r.get("comparison"):
            groups.append((r, pending))
            pending = []
        else:
            pending.append(r)
    return groups


def _render_run(comp: dict, runs: list[dict]) -> list[str]:
    ds = comp["dataset"]
    sub = ds.get("subsample") or {}
    size = "the whole graph" if not (sub.get("users") or sub.get("items")) else "a subsample"
    command = comp.get("command") or (
        f"python benchmarks/vs_reference.py --reference-repo PATH --epochs {comp['epochs']}"
        + (f" --users {sub.get('users')} --items {sub.get('items')}" if sub.get("users") or sub.get("items") else "")
    )
    label = {"authors": "authors' code (full graph)", "full_graph": "sea_dist full-graph", "sampled": "sea_dist sampled, 2 workers"}
    lines = [
        f"## {comp['date']}: {ds['n_users']:,} users x {ds['n_items']:,} items, {comp['epochs']} epochs",
        "",
        f"`{command}`: {size} of Baby, {ds['n_interactions']:,} interactions "
        f"(train/valid/test {'/'.join(f'{n:,}' for n in ds['splits'])}).",
        "",
        "| run | train s/epoch | x authors | eval s/epoch | valid Recall@20 by epoch | x authors' Recall@20 by epoch "
        "| s to authors' best | torch threads | load avg (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        mode = "authors" if r["impl"] == "authors" else r["mode"]
        c = comp.get(mode, {})
        ratio = "1" if mode == "authors" else f"{c.get('train_s_per_epoch_over_authors')}"
        recall_ratio = "-" if mode == "authors" else ", ".join(str(x) for x in c.get("recall_over_authors_by_epoch", []))
        reach = comp["authors_wall_to_best_s"] if mode == "authors" else c.get("wall_to_authors_best_s")
        lines.append(
            f"| {label.get(mode, mode)} | {r['train_s_per_epoch']} | {ratio} | {r['eval_s_per_epoch']} | "
            f"{', '.join(str(v) for v in r['valid_recall@20_by_epoch'])} | {recall_ratio} | "
            f"{reach if reach is not None else 'not reached'} | {r.get('torch_threads', '-')} | "
            f"{r['load_avg_mean'] if 'load_avg_mean' in r else str(r.get('load_avg_at_start', '-')) + ' (at start)'} |"
        )
    goal = [m for m in ("full_graph", "sampled") if m in comp]
    lines += [
        "",
        "Goal (<= 0.5x the authors' training s/epoch at >= 0.98x their validation Recall@20 at every epoch): "
        + "; ".join(f"{label[m]} {'met' if comp[m]['goal_met'] else 'not met'}" for m in goal)
        + ".",
        "",
    ]
    return lines


def render_table(rows: list[dict]) -> str:
    """The docs/results.md section: every complete run in ``rows``, newest first."""
    groups = _run_groups(rows)
    if not groups:
        raise SystemExit("no comparison line in the results (run the benchmark with the authors' mode)")
    lines = [
        TABLE_START,
        "# Against the authors' code (bruno686/SEA)",
        "",
        "Generated by `python benchmarks/vs_reference.py table` from `benchmarks/results/vs_reference.jsonl` "
        "(each run: `python benchmarks/vs_reference.py --reference-repo PATH ...`, PATH a checkout of the "
        "authors' repository). Data: the Amazon Baby interaction graph (`datasets/amazon-baby`, its split) "
        "with generated features at MMRec's widths (image 4096 + text 384: item factors of the training "
        "matrix through a random projection per modality, plus noise). Every run of a table has the same "
        "seed (999), lr 1e-4, batch 2048 and epochs, and runs one after the other on the same 2 CPU cores "
        "of a machine shared with other work (the load column): compare rows within a table. "
        "Train s/epoch excludes evaluation. The authors' evaluation ranks with the representations of the "
        "epoch's last training forward (one optimizer step stale); ours with those after the last step. "
        "Seconds to the authors' best: training plus evaluation from the first epoch until validation "
        "Recall@20 (4 decimals) first reaches the authors' best of that run. Torch threads: those of the "
        "one-process runs (`--threads`; sampled workers have 1 each). Under load, 2 threads cost the authors' "
        "code far more than 1 (its 50-step CLUB fit is hundreds of tiny kernels, each paying thread wake-ups), "
        "so tables with different thread settings do not compare.",
        "",
    ]
    for comp, runs in reversed(groups):
        lines += _render_run(comp, runs)
    lines.append(TABLE_END)
    return "\n".join(lines) + "\n"


def write_table(results: str, doc: str) -> None:
    """Put the section into ``doc`` between its markers (appended the first time)."""
    with open(results) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    section = render_table(rows)
    text = open(doc).read() if os.path.exists(doc) else ""
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + section + rest.split(TABLE_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    with open(doc, "w") as f:
        f.write(text)
    print(f"wrote the table into {doc}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_ours":
        _ours_main(json.loads(sys.argv[2]))
        return
    sys.path.insert(0, REPO)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="bench", choices=["bench", "golden", "table"])
    p.add_argument("--reference-repo", default="", help="a checkout of github.com/bruno686/SEA (read only)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the authors' code")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--users", type=int, default=0, help="subsample: this many users (0 = all of Baby)")
    p.add_argument("--items", type=int, default=0, help="subsample: the most interacted items (0 = all)")
    p.add_argument("--modes", default="authors,full_graph,sampled")
    p.add_argument("--workers", type=int, default=2, help="sampled mode's Ray workers (1 CPU each)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of the one-process runs, the authors' code and our full-graph mode "
                   "(0 = torch's default: all cores)")
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--rank", type=int, default=32, help="item factors behind the generated features")
    p.add_argument("--noise", type=float, default=1.0, help="feature noise (signal has unit variance)")
    p.add_argument("--baby-dir", default=BABY_DIR)
    p.add_argument("--workdir", default="", help="keep the data, the copy and logs here (default: a temp dir, removed)")
    p.add_argument("--out", default=None, help="also append the JSON lines here (golden: the output file)")
    p.add_argument("--reference-commit", default="", help="golden: recorded when PATH has no .git")
    p.add_argument("--doc", default=os.path.join(REPO, "docs", "results.md"), help="table: the document to update")
    a = p.parse_args()
    if a.command == "table":
        write_table(a.out or RESULTS, a.doc)
        return
    if not a.reference_repo:
        p.error("--reference-repo PATH is required (a checkout of github.com/bruno686/SEA)")
    if a.command == "golden":
        a.out = a.out or GOLDEN_OUT
        golden(a)
    else:
        bench(a)


if __name__ == "__main__":
    main()
