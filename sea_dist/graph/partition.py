"""DGL partitions of the training graph: written by the prepare job, loaded by each worker.

What a partition holds, and why (the *halo*)
--------------------------------------------
``dgl.distributed.partition_graph`` (METIS or random) assigns every user and item to one of
``P`` partitions and renumbers them so that each partition's own ("inner") nodes form one
contiguous id range per node type; these renumbered ids are the *prepared ids* every later
stage uses (id maps translate them back to raw ids). It is given the heterograph of
``item -> user`` interaction edges plus the ``item -> item`` kNN edges, and ``num_hops=1``. DGL
then stores in partition ``p`` every interaction edge with *either* end among its own nodes
(measured: its halo follows the edges both ways), plus the other ends as *halo* nodes:

* an inner user has **all** its training interactions, an inner item **all** its users;
* a halo item (another partition's item that an inner user interacted with) has only the
  users it shares with this partition. The sampler draws its user neighbours from those and
  rescales by the item's **full** degree, so the hop stays an unbiased estimate of the
  full-graph sum, but from this partition's users only: the one approximation of
  partition-local training (METIS keeps most of a user's items in its partition;
  docs/scaling.md measures how many edges that leaves out).

An edge is stored in the partitions of both its ends, so a partition holds about
``1 - (1 - 1/P)^2`` of the edges under random partitioning (3/4 at P=2, ~2/P for large P)
and fewer under METIS. Training triples are the edges into inner users: each edge is trained
exactly once per epoch across the workers.

DGL keeps edge data only for inner edges and a halo item's kNN rows are not in the partition,
but SEA's item-item hop needs the kNN rows of *every* item a batch touches (a batch's positive
items are often halo items). So the prepare job also writes one small side file per partition
(``local.npz``): for each local item and user its prepared id, raw id, full training degree and
whether it is inner, and the weighted kNN in-edges of every local item (neighbours that are not
yet local are appended as extra items). Normalisation always uses full-graph degrees; nothing
on a worker grows with the whole graph.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from sea_dist.storage.ids import as_raw_ids
from sea_dist.graph.dgl_compat import dgl

log = logging.getLogger(__name__)

GRAPH_NAME = "train"
ITEM_TO_USER = ("item", "interacted_by", "user")
ITEM_TO_ITEM = ("item", "knn", "item")  # src = neighbour j, dst = item i
SIDE_FILE = "local.npz"
PART_METHODS = ("auto", "metis", "random")


def choose_part_method(requested: str, n_train_edges: int, metis_max_edges: int) -> str:
    """``auto`` = METIS while the graph is small enough for its in-memory passes, else random."""
    if requested not in PART_METHODS:
        raise ValueError(f"part_method must be one of {PART_METHODS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "metis" if n_train_edges <= metis_max_edges else "random"


@dataclass
class PartitionLayout:
    """Where each partition's inner nodes sit in the prepared id space (contiguous ranges)."""

    num_parts: int
    method: str
    user_offsets: list[int]  # partition p owns prepared user ids [offsets[p], offsets[p+1])
    item_offsets: list[int]
    user_new_to_old: np.ndarray  # prepared user id -> contiguous dataset index
    item_new_to_old: np.ndarray
    part_stats: list[dict]

    def to_manifest(self) -> dict:
        return {
            "num_parts": self.num_parts,
            "method": self.method,
            "user_offsets": self.user_offsets,
            "item_offsets": self.item_offsets,
            "parts": self.part_stats,
        }


def write_partitions(
    n_users: int,
    n_items: int,
    ui_users: np.ndarray,
    ui_items: np.ndarray,
    knn_rows: torch.Tensor,
    knn_cols: torch.Tensor,
    knn_weights: torch.Tensor,
    user_raw_ids: np.ndarray,
    item_raw_ids: np.ndarray,
    num_parts: int,
    method: str,
    out_dir: str,
    seed: int = 0,
) -> PartitionLayout:
    """Partition the training graph into ``out_dir`` (DGL's format plus our side files)."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if num_parts > min(n_users, n_items):
        raise ValueError(
            f"cannot split {n_users} users and {n_items} items into {num_parts} partitions"
        )
    started = time.monotonic()
    g = dgl.heterograph(
        {
            ITEM_TO_USER: (torch.as_tensor(ui_items), torch.as_tensor(ui_users)),
            ITEM_TO_ITEM: (knn_cols, knn_rows),
        },
        num_nodes_dict={"user": n_users, "item": n_items},
    )
    log.info("partition: %d-way %s partitioning of %d users, %d items, %d interactions",
             num_parts, method, n_users, n_items, len(ui_users))
    # DGL prints its progress to stdout, where our jobs write their results: move it to stderr.
    # Its random partitioner draws from numpy's global generator: seed it for reproducible
    # partitions, and put the caller's state back.
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        dgl.seed(seed)
        with contextlib.redirect_stdout(sys.stderr):
            node_map, _ = dgl.distributed.partition_graph(
                g, GRAPH_NAME, num_parts, out_dir, part_method=method, num_hops=1, return_mapping=True
            )
    finally:
        np.random.set_state(state)
    del g
    user_new_to_old = node_map["user"].numpy().astype(np.int64)
    item_new_to_old = node_map["item"].numpy().astype(np.int64)
    user_degree = np.bincount(ui_users, minlength=n_users).astype(np.int64)
    item_degree = np.bincount(ui_items, minlength=n_items).astype(np.int64)
    # kNN in-edges grouped by destination item (in prepared ids), for the side files
    old_to_new_item = np.empty(n_items, dtype=np.int64)
    old_to_new_item[item_new_to_old] = np.arange(n_items)
    knn_dst = old_to_new_item[knn_rows.numpy()]
    knn_src = old_to_new_item[knn_cols.numpy()]
    order = np.argsort(knn_dst, kind="stable")
    knn_dst, knn_src, knn_w = knn_dst[order], knn_src[order], knn_weights.numpy()[order]
    knn_ptr = np.searchsorted(knn_dst, np.arange(n_items + 1))

    config = _read_config(out_dir)
    user_offsets = _type_offsets(config, "user")
    item_offsets = _type_offsets(config, "item")
    stats = []
    for part in range(num_parts):
        local = _side_arrays(
            out_dir, part,
            user_new_to_old, item_new_to_old, user_degree, item_degree,
            user_raw_ids, item_raw_ids, knn_src, knn_w, knn_ptr,
        )
        path = os.path.join(out_dir, f"part{part}", SIDE_FILE)
        np.savez(path, **local)
        stats.append(
            {
                "inner_users": user_offsets[part + 1] - user_offsets[part],
                "inner_items": item_offsets[part + 1] - item_offsets[part],
                "local_users": int(len(local["user_global"])),
                "local_items": int(len(local["item_global"])),
                "train_edges": int(local["train_edges"][0]),
                "knn_edges": int(len(local["knn_dst"])),
            }
        )
        log.info("partition %d/%d: %s", part + 1, num_parts, stats[-1])
    log.info("partition: done in %.1fs", time.monotonic() - started)
    return PartitionLayout(
        num_parts, method, user_offsets, item_offsets, user_new_to_old, item_new_to_old, stats
    )


def _read_config(out_dir: str) -> dict:
    with open(os.path.join(out_dir, f"{GRAPH_NAME}.json")) as f:
        return json.load(f)


def _type_offsets(config: dict, ntype: str) -> list[int]:
    """Per-type prepared-id offsets of each partition's inner nodes, from DGL's node map.

    DGL's ``node_map[ntype]`` lists, per partition, that type's range in the *homogeneous*
    renumbering; the per-type ids of partition p start where the earlier partitions' counts end.
    """
    ranges = config["node_map"][ntype]
    counts = [hi - lo for lo, hi in ranges]
    return [0] + np.cumsum(counts).astype(int).tolist()


def _side_arrays(
    out_dir, part, user_new_to_old, item_new_to_old, user_degree, item_degree,
    user_raw_ids, item_raw_ids, knn_src, knn_w, knn_ptr,
) -> dict[str, np.ndarray]:
    """The per-partition arrays DGL does not keep (see the module docstring)."""
    lg, gpb, ntypes, etypes = _load_dgl_partition(os.path.join(out_dir, f"{GRAPH_NAME}.json"), part)
    ntype_ids, per_type = gpb.map_to_per_ntype(lg.ndata[dgl.NID])
    item_t, user_t = ntypes.index("item"), ntypes.index("user")
    inner = lg.ndata["inner_node"].bool().numpy()
    is_item = (ntype_ids == item_t).numpy()
    is_user = (ntype_ids == user_t).numpy()
    items = per_type.numpy()[is_item].astype(np.int64)
    users = per_type.numpy()[is_user].astype(np.int64)
    item_inner = inner[is_item]
    # kNN in-edges of every local item; neighbours not yet local become extra items
    counts = knn_ptr[items + 1] - knn_ptr[items]
    starts = np.repeat(knn_ptr[items], counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    edge_pos = starts + within
    src_global = knn_src[edge_pos]
    extra = np.setdiff1d(np.unique(src_global), items)
    all_items = np.concatenate([items, extra])
    sorter = np.argsort(all_items)
    src_local = sorter[np.searchsorted(all_items, src_global, sorter=sorter)]
    dst_local = np.repeat(np.arange(len(items)), counts)
    # training edges of this partition: interaction edges into inner users
    etype_ids = lg.edata[dgl.ETYPE]
    ui = (etype_ids == etypes.index(ITEM_TO_USER[1])).numpy()
    _, dst = lg.edges()
    train_edges = int(np.count_nonzero(ui & inner[dst.numpy()]))
    return {
        "item_global": all_items,
        "item_raw": as_raw_ids(item_raw_ids[item_new_to_old[all_items]]),
        "item_degree": item_degree[item_new_to_old[all_items]],
        "item_inner": np.concatenate([item_inner, np.zeros(len(extra), dtype=bool)]),
        "item_in_dgl": np.array([len(items)], dtype=np.int64),
        "user_global": users,
        "user_raw": as_raw_ids(user_raw_ids[user_new_to_old[users]]),
        "user_degree": user_degree[user_new_to_old[users]],
        "user_inner": inner[is_user],
        "knn_dst": dst_local.astype(np.int64),
        "knn_src": src_local.astype(np.int64),
        "knn_w": knn_w[edge_pos].astype(np.float32),
        "train_edges": np.array([train_edges], dtype=np.int64),
    }


def _load_dgl_partition(config_path: str, part: int):
    """``dgl.distributed.load_partition``'s graph, partition book and type names."""
    lg, _, _, gpb, _, ntypes, etypes = dgl.distributed.load_partition(config_path, part)
    return lg, gpb, list(ntypes), [e if isinstance(e, str) else e[1] for e in etypes]


# ---- the worker side ------------------------------------------------------------------------


@dataclass
class LocalPartition:
    """One worker's view of the training graph, in *local* ids (halo: see the module docstring).

    Local items ``0..n_items-1`` (DGL's local items first, then kNN-only extras), local users
    ``0..n_users-1``; ``*_global`` give their prepared ids, ``item_raw`` the raw ids that key
    the feature shards. ``ui_users``/``ui_items`` are every interaction edge the partition holds
    (for sampling); ``train_mask`` marks the ones into inner users, which this worker trains on.
    """

    part: int
    item_global: np.ndarray
    item_raw: np.ndarray
    item_degree: np.ndarray
    item_inner: np.ndarray
    user_global: np.ndarray
    user_raw: np.ndarray
    user_degree: np.ndarray
    user_inner: np.ndarray
    # every stored interaction edge; a trainer that has built its sampler (which keeps its own
    # CSC copy) sets these three to None to release them
    ui_users: np.ndarray | None
    ui_items: np.ndarray | None
    train_mask: np.ndarray | None
    knn_dst: np.ndarray
    knn_src: np.ndarray
    knn_w: np.ndarray
    n_dgl_items: int  # items 0..n_dgl_items-1 are DGL's (they have kNN rows); the rest extras
    loaded_bytes: int = 0  # bytes copied from storage to load it

    @property
    def n_users(self) -> int:
        return len(self.user_global)

    @property
    def n_items(self) -> int:
        return len(self.item_global)

    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


def load_local_partition(fs, prepared_path: str, part: int, scratch: str | None = None) -> LocalPartition:
    """Copy partition ``part`` (DGL files + side file) from ``fs`` and load it.

    DGL's ``load_partition`` reads local files only, so the partition's folder and the
    partition config are copied to a local scratch directory first (deleted afterwards).
    """
    directory = tempfile.mkdtemp(prefix=f"sea_part{part}_", dir=scratch)
    try:
        names = [f"{GRAPH_NAME}.json"] + [
            f"part{part}/{name}" for name in ("graph.dgl", "node_feat.dgl", "edge_feat.dgl", SIDE_FILE)
        ]
        os.makedirs(os.path.join(directory, f"part{part}"))
        for name in names:
            source = posixpath.join(prepared_path, "partitions", name)
            if not fs.exists(source):
                continue  # DGL omits empty feature files
            fs.get(source, os.path.join(directory, name))
        loaded = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory) for f in files
        )
        lg, gpb, ntypes, etypes = _load_dgl_partition(os.path.join(directory, f"{GRAPH_NAME}.json"), part)
        with open(os.path.join(directory, f"part{part}", SIDE_FILE), "rb") as f:
            side = dict(np.load(io.BytesIO(f.read())))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ntype_ids = lg.ndata[dgl.NTYPE].numpy()
    is_item = ntype_ids == ntypes.index("item")
    # homogeneous local node index -> index within its type (DGL order = side-file order)
    type_pos = np.empty(len(ntype_ids), dtype=np.int64)
    type_pos[is_item] = np.arange(int(is_item.sum()))
    type_pos[~is_item] = np.arange(int((~is_item).sum()))
    if int(is_item.sum()) != int(side["item_in_dgl"][0]) or int((~is_item).sum()) != len(side["user_global"]):
        raise ValueError(f"partition {part}: side file does not match the DGL partition (rebuild it)")
    src, dst = (t.numpy() for t in lg.edges())
    ui = lg.edata[dgl.ETYPE].numpy() == etypes.index(ITEM_TO_USER[1])
    ui_items, ui_users = type_pos[src[ui]], type_pos[dst[ui]]
    user_inner = side["user_inner"].astype(bool)
    return LocalPartition(
        part=part,
        item_global=side["item_global"],
        item_raw=side["item_raw"],
        item_degree=side["item_degree"],
        item_inner=side["item_inner"].astype(bool),
        user_global=side["user_global"],
        user_raw=side["user_raw"],
        user_degree=side["user_degree"],
        user_inner=user_inner,
        ui_users=ui_users,
        ui_items=ui_items,
        train_mask=user_inner[ui_users],
        knn_dst=side["knn_dst"],
        knn_src=side["knn_src"],
        knn_w=side["knn_w"],
        n_dgl_items=int(side["item_in_dgl"][0]),
        loaded_bytes=loaded,
    )
