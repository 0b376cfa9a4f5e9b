"""``dataset.json``: what a dataset root claims to be (counts, modalities, splits), parsed and checked.

Cheap to read on its own (:func:`load_meta`): jobs that need counts, not data (the launcher's
pre-flight, the importers' reuse checks) read only this file. The layout of a dataset root is
in :mod:`sea_dist.data.dataset`.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from sea_dist.storage.errors import DatasetError
from sea_dist.storage.fs import display, make_filesystem
from sea_dist.storage.retry import with_retries

__all__ = ["SPLIT_NAMES", "DatasetMeta", "load_meta", "read_meta", "write_meta", "drop_meta"]

#: split code -> name, as stored in ``interactions.split`` and ``dataset.json["splits"]``.
SPLIT_NAMES: tuple[str, str, str] = ("train", "valid", "test")

_META_KEYS = ("name", "version", "n_users", "n_items", "n_interactions", "modalities", "splits")


@dataclass(frozen=True)
class DatasetMeta:
    """The content of ``dataset.json``: what the data claims to be, checked against the data."""

    name: str
    version: str
    n_users: int
    n_items: int
    n_interactions: int
    modalities: dict[str, int]  # modality -> feature dim, ordered as in dataset.json
    splits: dict[str, int]  # "train"/"valid"/"test" -> number of interactions

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the key order of the contract."""
        return {
            "name": self.name,
            "version": self.version,
            "n_users": int(self.n_users),
            "n_items": int(self.n_items),
            "n_interactions": int(self.n_interactions),
            "modalities": {k: int(v) for k, v in self.modalities.items()},
            "splits": {k: int(self.splits[k]) for k in SPLIT_NAMES if k in self.splits},
        }

    @classmethod
    def from_dict(cls, obj: Any, where: str = "dataset.json") -> "DatasetMeta":
        """Parse and check a decoded ``dataset.json``; ``where`` names the file in errors."""
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: malformed, expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in _META_KEYS if k not in obj]
        if missing:
            raise DatasetError(f"{where}: malformed, missing key(s) {missing}")

        def _count(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DatasetError(f"{where}: key {key!r} must be a non-negative integer, got {value!r}")
            return int(value)

        if not isinstance(obj["name"], str):
            raise DatasetError(f"{where}: key 'name' must be a string, got {obj['name']!r}")
        if not isinstance(obj["version"], (str, int)) or isinstance(obj["version"], bool):
            raise DatasetError(f"{where}: key 'version' must be a string, got {obj['version']!r}")
        mods = obj["modalities"]
        if not isinstance(mods, dict) or not mods:
            raise DatasetError(f"{where}: key 'modalities' must be a non-empty object {{name: dim}}, got {mods!r}")
        modalities: dict[str, int] = {}
        for m, dim in mods.items():
            if not m or "/" in m:
                raise DatasetError(f"{where}: modality name {m!r} is not a valid folder name")
            d = _count(f"modalities.{m}", dim)
            if d == 0:
                raise DatasetError(f"{where}: modality {m!r} has dim 0")
            if d % 2:
                # SEA splits each modality's transformed features into a generic and a unique
                # half (docs/model.md, "Forward pass", step 1), so the dim must be even.
                raise DatasetError(
                    f"{where}: modality {m!r} has odd feature dim {d}; SEA splits each modality "
                    "into generic/unique halves, so dims must be even"
                )
            modalities[m] = d
        sp = obj["splits"]
        if not isinstance(sp, dict):
            raise DatasetError(f"{where}: key 'splits' must be an object {{train, valid, test}}, got {sp!r}")
        missing_sp = [k for k in SPLIT_NAMES if k not in sp]
        if missing_sp:
            raise DatasetError(f"{where}: malformed, key 'splits' is missing {missing_sp}")
        extra_sp = [k for k in sp if k not in SPLIT_NAMES]
        if extra_sp:
            raise DatasetError(f"{where}: unknown split name(s) {extra_sp} in 'splits' (expected {list(SPLIT_NAMES)})")
        return cls(
            name=obj["name"],
            version=str(obj["version"]),
            n_users=_count("n_users", obj["n_users"]),
            n_items=_count("n_items", obj["n_items"]),
            n_interactions=_count("n_interactions", obj["n_interactions"]),
            modalities=modalities,
            splits={k: _count(f"splits.{k}", sp[k]) for k in SPLIT_NAMES},
        )



def load_meta(root: str, s3_endpoint_url: str = "") -> DatasetMeta:
    """Read and check only ``dataset.json`` (cheap: for jobs that need counts, not data)."""
    fs, path = make_filesystem(root, s3_endpoint_url)
    return read_meta(fs, path, root)


def read_meta(fs: fsspec.AbstractFileSystem, path: str, root: str) -> DatasetMeta:
    meta_path = posixpath.join(path, "dataset.json")
    where = display(fs, meta_path)

    def read() -> bytes:
        # the key first: s3fs answers "no" for a bucket it cannot reach, whatever the reason,
        # but raises the real error (denied, connection refused) for a key
        if not fs.exists(meta_path):
            if not fs.exists(path):
                raise DatasetError(f"{root}: dataset root does not exist")
            raise DatasetError(f"{where}: dataset.json is missing (not a dataset root?)")
        with fs.open(meta_path, "rb") as f:
            return f.read()

    raw = with_retries(read, f"reading {where}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{where}: malformed JSON ({e})") from e
    return DatasetMeta.from_dict(obj, where)


def write_meta(fs: fsspec.AbstractFileSystem, path: str, meta: DatasetMeta) -> None:
    """Write ``dataset.json``, the last file of a dataset root: readers look for it first, so a
    writer that dies midway leaves a root that does not claim to be a dataset."""
    with fs.open(posixpath.join(path, "dataset.json"), "wb") as f:
        f.write((json.dumps(meta.to_dict(), indent=2) + "\n").encode("utf-8"))
    fs.invalidate_cache()


def drop_meta(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove a root's ``dataset.json`` before rewriting its shards, so an old claim is never
    paired with half-written new data."""
    meta_path = posixpath.join(path, "dataset.json")
    if fs.exists(meta_path):
        fs.rm(meta_path)
