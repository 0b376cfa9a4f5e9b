"""The golden fixture: a tiny MMRec-format dataset and SEA's initial parameters, bit-for-bit
reproducible from code alone.

Shared by ``tests/unit/test_golden_reference.py`` (our full-graph step) and
``benchmarks/vs_reference.py golden`` (the authors' code, which wrote
``tests/data/golden/reference.json``). Everything comes from a counter-based hash (splitmix64
in numpy ``uint64`` arithmetic), not from a library RNG, so the bytes cannot change with a
numpy or torch release; ``describe`` records a checksum of each array and the test checks it.

Sizes: 30 users, 60 items, two modalities at MMRec's widths (image 4096, text 384: the authors'
``SEA.py`` hard-codes them). 60 rather than 20 items: with 20 items Recall@20 ranks every item
and is 1.0 for any model; with 40 clustered items it was still 1.0 from the first epoch.

Initial parameters are injected on both sides rather than drawn by either side's initialiser:
the two codes draw their parameters in different orders from different generators, so equal
loss terms need equal starting points. Values are uniform with each layer's default scale
(torch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for Linear layers; the xavier-normal standard
deviation for the user preference tables; softmax-normalised positive weights per user);
the initialisers themselves are outside what this fixture checks.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass

import numpy as np

NAME = "golden"
EPOCHS = 2
N_USERS = 30
N_ITEMS = 60
DIMS = {"image": 4096, "text": 384}
EMBEDDING = 64  # k
PROJ_HIDDEN, PROJ_OUT, CLUB_DIM, CLUB_HIDDEN = 64, 32, 32, 8
N_CLUSTERS = 6

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(stream: str, shape: tuple[int, ...]) -> np.ndarray:
    """float64 in [0, 1) for every element of ``shape``: hash(stream, element index)."""
    base = np.uint64(zlib.crc32(stream.encode()) << 32)
    n = int(np.prod(shape))
    out = np.empty(n, dtype=np.float64)
    chunk = 1 << 21
    with np.errstate(over="ignore"):
        for lo in range(0, n, chunk):
            idx = np.arange(lo, min(n, lo + chunk), dtype=np.uint64) + base
            bits = _splitmix64(idx) >> np.uint64(11)  # 53 bits
            out[lo : lo + len(idx)] = bits.astype(np.float64) / float(1 << 53)
    return out.reshape(shape)


def symmetric(stream: str, shape: tuple[int, ...], bound: float) -> np.ndarray:
    return ((uniform(stream, shape) * 2.0 - 1.0) * bound).astype(np.float32)


@dataclass
class Fixture:
    users: np.ndarray  # int64, one row per interaction, MMRec .inter order
    items: np.ndarray
    splits: np.ndarray  # int8: 0 train, 1 valid, 2 test
    features: dict[str, np.ndarray]  # float32 [N_ITEMS, dim]
    n_users: int = N_USERS
    n_items: int = N_ITEMS


def build_fixture() -> Fixture:
    """Each user likes one of six item clusters: 5-8 interactions, mostly in that cluster;
    MMRec's per-user split for users with fewer than 10 (n-2 train, 1 valid, 1 test).
    Features: the item's cluster centre plus noise, so kNN and both modalities carry signal."""
    cluster = np.arange(N_ITEMS) % N_CLUSTERS
    users, items, splits = [], [], []
    for u in range(N_USERS):
        draw = uniform(f"user{u}", (N_ITEMS + 1,))
        count = 5 + int(draw[0] * 4)
        home = u % N_CLUSTERS
        # ranking key: own-cluster items are preferred, not exclusive (about 2 in 3 picks)
        key = draw[1:] + np.where(cluster == home, 0.0, 0.3)
        chosen = np.argsort(key, kind="stable")[:count]
        order = np.argsort(uniform(f"order{u}", (count,)), kind="stable")
        chosen = chosen[order]
        labels = np.zeros(count, dtype=np.int8)
        labels[-2], labels[-1] = 1, 2
        users.extend([u] * count)
        items.extend(chosen.tolist())
        splits.extend(labels.tolist())
    features = {}
    for m, dim in DIMS.items():
        centres = symmetric(f"{m}/centres", (N_CLUSTERS, dim), 1.0)
        noise = symmetric(f"{m}/noise", (N_ITEMS, dim), 1.0)
        features[m] = (centres[cluster] + 1.0 * noise).astype(np.float32)
    return Fixture(
        np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), np.asarray(splits, dtype=np.int8), features
    )


def _linear(name: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
    bound = 1.0 / np.sqrt(fan_in)
    return {
        f"{name}.weight": symmetric(f"{name}.weight", (fan_out, fan_in), bound),
        f"{name}.bias": symmetric(f"{name}.bias", (fan_out,), bound),
    }


def initial_parameters() -> dict[str, np.ndarray]:
    """SEA's trainable parameters, in a role naming of this fixture's own
    (``<modality>.<role>``, ``users.*``, ``q.*``); see :data:`REFERENCE_NAMES`."""
    p: dict[str, np.ndarray] = {}
    for m, dim in DIMS.items():
        half = dim // 2
        p.update(_linear(f"{m}.transform", dim, dim))
        p.update(_linear(f"{m}.gcn_hidden", dim, 4 * EMBEDDING))
        p.update(_linear(f"{m}.gcn_out", 4 * EMBEDDING, EMBEDDING))
        p.update(_linear(f"{m}.proj0", half, PROJ_HIDDEN))
        p.update(_linear(f"{m}.proj3", PROJ_HIDDEN, PROJ_HIDDEN))
        p.update(_linear(f"{m}.proj6", PROJ_HIDDEN, PROJ_OUT))
        for bn in ("bn1", "bn4"):
            p[f"{m}.{bn}.weight"] = (1.0 + symmetric(f"{m}.{bn}.weight", (PROJ_HIDDEN,), 0.1)).astype(np.float32)
            p[f"{m}.{bn}.bias"] = symmetric(f"{m}.{bn}.bias", (PROJ_HIDDEN,), 0.1)
        p.update(_linear(f"{m}.club_generic", half, CLUB_DIM))
        p.update(_linear(f"{m}.club_unique", half, CLUB_DIM))
        xavier_std = np.sqrt(2.0 / (N_USERS + EMBEDDING))
        p[f"users.preference.{m}"] = symmetric(f"users.preference.{m}", (N_USERS, EMBEDDING), xavier_std * np.sqrt(3.0))
    raw = 0.5 + uniform("users.modality_weights", (N_USERS, len(DIMS)))
    p["users.modality_weights"] = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
    for net in ("mu", "logvar"):
        p.update(_linear(f"q.{net}0", CLUB_DIM, CLUB_HIDDEN))
        p.update(_linear(f"q.{net}2", CLUB_HIDDEN, CLUB_DIM))
    return p


#: fixture role -> the authors' parameter name (``model.`` = their SEA module, ``club.`` = their
#: CLUBSample). Image is their ``v_*``, text their ``t_*``.
REFERENCE_NAMES: dict[str, str] = {}
for _m, _r in (("image", "v"), ("text", "t")):
    for _role, _theirs in (
        ("transform", f"{_r}_item_linear"),
        ("gcn_hidden", f"{_r}_gcn.MLP"),
        ("gcn_out", f"{_r}_gcn.MLP_1"),
        ("proj0", f"{_r}_proj.head.0"),
        ("bn1", f"{_r}_proj.head.1"),
        ("proj3", f"{_r}_proj.head.3"),
        ("bn4", f"{_r}_proj.head.4"),
        ("proj6", f"{_r}_proj.head.6"),
        ("club_generic", f"{_r}_trans1"),
        ("club_unique", f"{_r}_trans2"),
    ):
        for _kind in ("weight", "bias"):
            REFERENCE_NAMES[f"{_m}.{_role}.{_kind}"] = f"model.{_theirs}.{_kind}"
    REFERENCE_NAMES[f"users.preference.{_m}"] = f"model.{_r}_gcn.preference"
REFERENCE_NAMES["users.modality_weights"] = "model.weight_u"
for _net, _theirs in (("mu", "p_mu"), ("logvar", "p_logvar")):
    for _layer in ("0", "2"):
        for _kind in ("weight", "bias"):
            REFERENCE_NAMES[f"q.{_net}{_layer}.{_kind}"] = f"club.{_theirs}.{_layer}.{_kind}"


def reference_parameters(fixture: Fixture | None = None) -> dict[str, np.ndarray]:
    """The initial parameters under the authors' names and shapes (``weight_u`` is ``(U, 2, 1)``)."""
    out = {}
    for role, value in initial_parameters().items():
        name = REFERENCE_NAMES[role]
        out[name] = value[:, :, None] if role == "users.modality_weights" else value
    return out


def write_mmrec(fixture: Fixture, out_dir: str) -> None:
    """The fixture as an MMRec dataset folder: ``golden.inter`` (TAB-separated, header
    ``userID itemID x_label``), ``image_feat.npy``, ``text_feat.npy`` and the
    ``user_graph_dict.npy`` the authors' model loads (empty: SEA never uses it in a loss)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{NAME}.inter"), "w") as f:
        f.write("userID\titemID\tx_label\n")
        for u, i, s in zip(fixture.users.tolist(), fixture.items.tolist(), fixture.splits.tolist()):
            f.write(f"{u}\t{i}\t{s}\n")
    np.save(os.path.join(out_dir, "image_feat.npy"), fixture.features["image"])
    np.save(os.path.join(out_dir, "text_feat.npy"), fixture.features["text"])
    graph = {u: [[], []] for u in range(fixture.n_users)}
    np.save(os.path.join(out_dir, "user_graph_dict.npy"), graph, allow_pickle=True)


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def describe(fixture: Fixture, params: dict[str, np.ndarray] | None = None) -> dict:
    """Sizes and checksums (the test refuses to compare against numbers made from other bytes)."""
    params = initial_parameters() if params is None else params
    return {
        "n_users": fixture.n_users,
        "n_items": fixture.n_items,
        "n_interactions": int(len(fixture.users)),
        "splits": [int((fixture.splits == k).sum()) for k in range(3)],
        "dims": dict(DIMS),
        "sha256": {
            "users": _digest(fixture.users),
            "items": _digest(fixture.items),
            "splits": _digest(fixture.splits),
            **{f"features.{m}": _digest(f) for m, f in fixture.features.items()},
            "parameters": hashlib.sha256(
                b"".join(name.encode() + _digest(params[name]).encode() for name in sorted(params))
            ).hexdigest()[:16],
        },
    }
