"""Warm start: begin tonight's training from last night's published model.

SEA represents items by their features, so item changes need nothing: a new item is scored
from its features on day one. Users need their rows: the published model carries each user
table row keyed by *raw* user id, and the rows are moved to the new run's contiguous ids:

- users in both versions keep their preference rows and modality weights;
- users gone since are dropped;
- new users get, per modality, the mean of their training items' normalised GCN inputs
  ``normalize(a_m(i))`` (computed with the warm-started network) as preference row — the
  point the GCN's first layer would pull them to — and the mean modality weights of the kept
  users; new users without training items keep the random initialisation.

Dense parameters (and Q) are copied as they are; the optimizers start fresh unless
``train.warm_start_optimizer`` restores the dense Adam moments (same training mode only).
"""
from __future__ import annotations

import io
import logging
import posixpath

import numpy as np
import torch
import torch.nn.functional as F

from sea_dist.storage.errors import DatasetError
from sea_dist.storage.ids import ids_from_state, numpy_id_kind, same_kind
from sea_dist.ops.publish import Publisher
from sea_dist.storage.retry import with_retries

log = logging.getLogger(__name__)

MODEL_FILE = "model/state.pt"


class WarmStartError(DatasetError):
    """The published model cannot seed this run (missing, or a different model shape)."""


def published_model_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_published_model(output_dir: str, s3_endpoint_url: str = "") -> dict:
    """The model state published under ``output_dir`` (through its MANIFEST.json)."""
    publisher = Publisher(output_dir, s3_endpoint_url)
    manifest = publisher.read_manifest()
    if manifest is None:
        raise WarmStartError(f"warm start: nothing published under {output_dir} (no MANIFEST.json)")
    if MODEL_FILE not in manifest["files"]:
        raise WarmStartError(
            f"warm start: the model published under {output_dir} (run {manifest['run_id']}) has no "
            f"{MODEL_FILE}; it predates warm-start support"
        )
    path = publisher.published_file(MODEL_FILE)

    def read() -> bytes:
        with publisher.fs.open(path, "rb") as f:
            return f.read()

    data = with_retries(read, f"reading {path}")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state["source"] = posixpath.join(output_dir, manifest["prefix"])
    return state


def _index_in(old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """For each new id, its row in ``old_ids`` or -1."""
    if len(old_ids) == 0:
        return np.full(len(new_ids), -1, dtype=np.int64)
    order = np.argsort(old_ids, kind="stable")
    sorted_ids = old_ids[order]
    pos = np.searchsorted(sorted_ids, new_ids)
    pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
    found = (len(sorted_ids) > 0) & (sorted_ids[pos_clipped] == new_ids)
    return np.where(found, order[pos_clipped], -1)


def find_published(output_dir_or_source: str, latest: bool, s3_endpoint_url: str = "") -> dict | None:
    """``train.warm_start``'s model: the one published under ``source`` (``latest``: this run's
    own output directory, where on the first night of a deployment nothing is published yet:
    ``None``, training starts from scratch)."""
    if latest and Publisher(output_dir_or_source, s3_endpoint_url).read_manifest() is None:
        log.warning("warm start: nothing published under %s yet; training from scratch", output_dir_or_source)
        return None
    return load_published_model(output_dir_or_source, s3_endpoint_url)


@torch.no_grad()
def apply_warm_start(published: dict, model, club, optimizer, data, restore_optimizer: bool) -> dict:
    """Load ``published`` into ``model``, ``club`` and the user rows of ``data`` (a whole-graph
    batch source: ``tables``, ``dataset``, ``train_users``/``train_items``, ``features`` and the
    mode's ``name``); with ``restore_optimizer`` also the dense Adam moments. Returns what happened."""
    tables, dataset = data.tables, data.dataset
    if list(published["modalities"]) != list(model.modalities):
        raise WarmStartError(
            f"warm start: the published model has modalities {published['modalities']}, "
            f"this dataset has {model.modalities}"
        )
    try:
        model.load_state_dict(published["model"])
        club.load_state_dict(published["club"])
    except RuntimeError as error:
        raise WarmStartError(f"warm start: the published model does not fit this config: {error}") from None

    old_ids = ids_from_state(published["user_raw_ids"])
    if len(old_ids) and dataset.n_users and not same_kind(old_ids, dataset.user_raw_ids):
        raise WarmStartError(
            f"warm start: the published model's user ids are {numpy_id_kind(old_ids)}s, this dataset's "
            f"are {numpy_id_kind(dataset.user_raw_ids)}s; rows cannot be matched"
        )
    old_rows = _index_in(old_ids, dataset.user_raw_ids)
    kept = np.flatnonzero(old_rows >= 0)
    new = np.flatnonzero(old_rows < 0)
    kept_t = torch.from_numpy(kept)
    source_rows = torch.from_numpy(old_rows[kept])
    old_tables = published["tables"]
    device = tables.modality_weights.weight.device
    for m in model.modalities:
        weight = tables.preferences[m].weight
        weight[kept_t.to(device)] = old_tables[f"preferences.{m}.weight"][source_rows].to(device)
    weights = tables.modality_weights.weight
    old_weights = old_tables["modality_weights.weight"]
    weights[kept_t.to(device)] = old_weights[source_rows].to(device)

    initialised = 0
    if len(new):
        users, items = data.train_users, data.train_items
        is_new = np.zeros(dataset.n_users, dtype=bool)
        is_new[new] = True
        mask = is_new[users]
        new_users, new_items = users[mask], items[mask]
        if len(new_users):
            counts = np.bincount(new_users, minlength=dataset.n_users)
            touched = np.flatnonzero(counts)
            for m in model.modalities:
                unique_items, inverse = np.unique(new_items, return_inverse=True)
                a = model.branches[m].gcn_input(data.features[m][torch.from_numpy(unique_items).to(device)])
                a = F.normalize(a)[torch.from_numpy(inverse).to(device)]
                sums = torch.zeros_like(tables.preferences[m].weight)
                sums.index_add_(0, torch.from_numpy(new_users).to(device), a)
                rows = torch.from_numpy(touched).to(device)
                tables.preferences[m].weight[rows] = sums[rows] / torch.from_numpy(counts[touched]).to(sums)[:, None]
            mean_weights = old_weights[source_rows].mean(0) if len(kept) else old_weights.mean(0)
            weights[torch.from_numpy(touched).to(device)] = mean_weights.to(device)
            initialised = len(touched)

    if restore_optimizer:
        optimizer_state = published.get("dense_optimizer")
        if not optimizer_state or published.get("mode") != data.name:
            raise WarmStartError(
                "warm start: train.warm_start_optimizer needs a published model trained in the same "
                f"mode ({data.name}) with its optimizer state"
            )
        optimizer.load_state_dict(optimizer_state)
    report = {
        "source": published.get("source", ""),
        "kept_users": int(len(kept)),
        "new_users": int(len(new)),
        "new_users_initialised_from_items": int(initialised),
        "dropped_users": int(len(published["user_raw_ids"]) - len(kept)),
        "optimizer": "restored" if restore_optimizer else "fresh",
    }
    log.info("warm start from %s: %s", report["source"], report)
    return report
