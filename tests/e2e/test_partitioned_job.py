"""`python jobs/train.py train.partitioned=true` end to end: data in a moto S3 server, the
driver runs the prepare job, 2 Ray workers each load one partition from S3 and publish."""
import json
import tempfile

import pytest

from tests.e2e.conftest import run_job
from tests.e2e.test_train_job import FAST


@pytest.mark.slow
def test_partitioned_run_prepares_and_trains_from_s3(tiny_root, moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3})
    fs.put(tiny_root, "part-bucket/data", recursive=True)
    env = {"SEA_DIST_RAY_TMPDIR": tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")}
    args = [
        "--epochs", "2", "--output-dir", "s3://part-bucket/runs/p",
        "data.root=s3://part-bucket/data", f"data.s3_endpoint_url={moto_s3}",
        "train.partitioned=true", *FAST,
    ]
    result = run_job(args, env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "[prepare] building s3://part-bucket/data/prepared/p2-" in log
    prepared = fs.ls("part-bucket/data/prepared")
    assert len(prepared) == 1 and fs.exists(prepared[0] + "/MANIFEST.json")
    manifest = json.loads(fs.cat("part-bucket/runs/p/MANIFEST.json"))
    summary = json.loads(fs.cat(f"part-bucket/runs/p/{manifest['prefix']}/summary.json"))
    assert summary["mode"] == "partitioned" and summary["world_size"] == 2 and summary["epochs_run"] == 2
    part = summary["partition"]
    assert part["user_table_rows_per_worker"][0] + part["user_table_rows_per_worker"][1] == 400
    assert all(b > 0 for b in part["feature_bytes_read_per_epoch_per_worker"])
    users = [f for f in manifest["files"] if f.startswith("embeddings/users/")]
    assert len(users) == 2  # one file per worker: each wrote its own users

    # the same data again: the prepare step is reused, and the published model stands
    again = run_job(args, env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "is up to date" in again.stdout + again.stderr
    assert len(fs.ls("part-bucket/data/prepared")) == 1

    # a world size that does not match the prepared partitions is refused before training
    prepared_uri = "s3://" + prepared[0]
    bad = run_job([*args, f"data.prepared={prepared_uri}", "train.num_workers=3"], env)
    assert bad.returncode != 0 and "partitions but train.num_workers is 3" in bad.stderr
