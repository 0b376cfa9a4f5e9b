"""Datasets keyed by strings (SKUs, user handles), for the id paths' tests.

The ids are chosen so that string order differs from the integer order they came from
("sku-10" < "sku-9"), so nothing can pass by sorting numerically by accident.
"""
from __future__ import annotations

import numpy as np

from sea_dist.data.writer import write_dataset
from sea_dist.sources.synthetic import SyntheticSpec, generate


def user_key(raw: np.ndarray) -> np.ndarray:
    return np.char.add("user:", np.asarray(raw).astype(str))


def item_key(raw: np.ndarray) -> np.ndarray:
    return np.char.add("sku-", np.asarray(raw).astype(str))


def write_string_id_synthetic(spec: SyntheticSpec, root: str, **write_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Write ``spec`` with string ids; returns (user ids, item ids), both as written."""
    meta, users, items, splits, features, item_ids = generate(spec)
    write_dataset(root, meta, user_key(users), item_key(items), splits, features, item_key(item_ids), **write_kwargs)
    return np.unique(user_key(users)), item_key(item_ids)
