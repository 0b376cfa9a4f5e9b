"""Bad input through the real job: a clear message naming the file and problem, a non-zero
exit, and nothing published."""
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import run_job


def _shard(root, *parts):
    folder = os.path.join(root, *parts)
    return os.path.join(folder, sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))[0])


def _nan_feature(root):
    path = _shard(root, "features", "text")
    table = pq.read_table(path)
    values = table.column("embedding").combine_chunks().flatten().to_numpy().copy()
    values[5] = np.nan
    dim = table.schema.field("embedding").type.list_size
    emb = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), dim)
    pq.write_table(table.set_column(1, "embedding", emb), path, use_dictionary=False)
    return path, ["NaN"]


def _unknown_item(root):
    path = _shard(root, "interactions")
    table = pq.read_table(path)
    extra = pa.table({"user_id": pa.array([table.column("user_id")[0].as_py()], pa.int64()),
                      "item_id": pa.array([987654321], pa.int64()), "split": pa.array([0], pa.int8())})
    pq.write_table(pa.concat_tables([table.select(["user_id", "item_id", "split"]), extra]), path)
    return path, ["987654321"]


def _corrupt_shard(root):
    path = _shard(root, "interactions")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path, []


def _wrong_dim(root):
    meta_path = os.path.join(root, "dataset.json")
    meta = json.load(open(meta_path))
    meta["modalities"]["image"] = 18
    json.dump(meta, open(meta_path, "w"))
    return os.path.join(root, "features", "image"), ["18", "16"]


def _inconsistent_meta(root):
    meta_path = os.path.join(root, "dataset.json")
    meta = json.load(open(meta_path))
    meta["n_users"] += 5
    json.dump(meta, open(meta_path, "w"))
    return meta_path, ["n_users"]


def _missing_modality(root):
    path = os.path.join(root, "features", "text")
    shutil.rmtree(path)
    return path, []


CASES = {"nan": _nan_feature, "unknown-item": _unknown_item, "corrupt-shard": _corrupt_shard,
         "wrong-dim": _wrong_dim, "dataset-json": _inconsistent_meta, "missing-modality": _missing_modality}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dataset_fails_clearly_and_publishes_nothing(case, tiny_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(tiny_root, root)
    where, words = CASES[case](root)
    out = tmp_path / "out"
    result = run_job(["--full-graph", f"data.root={root}", "--output-dir", str(out)])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    message = result.stderr.split("error:", 1)[1]
    assert os.path.basename(where) in message, message
    for word in words:
        assert word in message, message
    assert not (out / "MANIFEST.json").exists()


# A bad dataset found only inside Ray workers: tests/e2e/test_fail_fast.py (one error line,
# no restart, no traceback, nothing published).
