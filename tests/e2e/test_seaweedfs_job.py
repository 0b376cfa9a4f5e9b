"""The whole partitioned job on SeaweedFS, a real S3 store that checks request signatures:
generate -> partitioned train, whose driver runs the prepare job first (2 Ray workers,
checkpoints in the store) -> publish -> read the model back through MANIFEST.json -> the same
command again finds the prepared version and the model up to date and trains nothing -> a world
size that does not match the partitions is refused before training. Credentials come only from
the environment. ``jobs/prepare.py`` on its own is tests/unit/test_prepare.py's (moto), and
here it meets a wrong secret.

moto (the other S3 in the tests) accepts any signature and is one implementation of
listings, multipart uploads and ranged reads; this run checks ours against another.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.e2e.conftest import REPO, TINY, run_job
from tests.e2e.test_train_job import FAST
from tests.seaweedfs import seaweedfs  # noqa: F401 - fixture


def _python(args, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_partitioned_job_on_seaweedfs(seaweedfs):  # noqa: F811 - the fixture
    from sea_dist.storage.fs import make_filesystem
    from sea_dist.ops.publish import Publisher

    store, url = seaweedfs, seaweedfs.url
    env = {**store.env(), "SEA_DIST_RAY_TMPDIR": tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")}
    root, out = f"s3://{store.bucket}/weed/data", f"s3://{store.bucket}/weed/runs/p"
    common = [f"data.root={root}", f"data.s3_endpoint_url={url}"]

    # generate, into the store
    gen = _python(
        ["-m", "sea_dist.sources.synthetic", "--users", str(TINY.n_users), "--items", str(TINY.n_items),
         "--interactions", str(TINY.n_interactions), "--image-dim", "16", "--text-dim", "8",
         "--name", TINY.name, "--out", root, "--s3-endpoint-url", url],
        env,
    )
    assert gen.returncode == 0, gen.stdout[-2000:] + gen.stderr[-2000:]

    # a wrong secret is refused by the store at once, not retried into a misleading error
    denied = _python(["jobs/prepare.py", *common], {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert denied.returncode == 1 and "PermissionError" in denied.stderr, denied.stderr[-2000:]
    assert "while listing s3://" in denied.stderr and "transient storage error" not in denied.stderr

    # partitioned training from the store; the driver prepares the partitions first
    args = ["--epochs", "2", "--output-dir", out, *common, "train.partitioned=true", *FAST]
    result = run_job(args, env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"[prepare] building {root}/prepared/p2-" in log

    # read the model back through the manifest, with the job's credentials
    os.environ.update(store.env())
    try:
        publisher = Publisher(out, url)
        manifest = publisher.read_manifest()
        summary = publisher.read_published_json("summary.json")
        fs, _ = make_filesystem(out, url)
        for name, size in manifest["files"].items():  # the listing the manifest was built from
            assert fs.size(publisher.published_file(name)) == size, name
        users = [n for n in manifest["files"] if n.startswith("embeddings/users/")]
        items = [n for n in manifest["files"] if n.startswith("embeddings/items/")]
        user_ids = np.concatenate([
            pq.read_table(fs.open(publisher.published_file(n), "rb")).column("user_id").to_numpy() for n in users
        ])
        item_rows = sum(pq.read_table(fs.open(publisher.published_file(n), "rb")).num_rows for n in items)
        checkpoints = fs.find(f"{out}/checkpoints")
        prepared_versions = fs.ls(f"{root}/prepared")
    finally:
        for key in store.env():
            os.environ.pop(key, None)
    assert summary["mode"] == "partitioned" and summary["world_size"] == 2 and summary["epochs_run"] == 2
    part = summary["partition"]
    assert sum(part["user_table_rows_per_worker"]) == TINY.n_users
    assert all(b > 0 for b in part["feature_bytes_read_per_epoch_per_worker"])
    assert len(users) == 2  # one file per worker
    assert len(user_ids) == len(np.unique(user_ids)) == TINY.n_users and item_rows == TINY.n_items
    assert any(c.endswith("/state.pt") for c in checkpoints)  # Ray Train's checkpoints went to the store
    assert any(c.endswith("/rank-00001.pt") for c in checkpoints)

    # the same command again: the prepared version is reused, the published model stands
    again = run_job(args, env)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    assert "is up to date" in log and "nothing to do" in log and "local Ray instance" not in log
    [prepared] = [p for p in prepared_versions if p.rstrip("/").split("/")[-1].startswith("p2-")]
    # a world size that does not match the prepared partitions is refused before training
    bad = run_job([*args, f"data.prepared=s3://{prepared}", "train.num_workers=3"], env)
    assert bad.returncode != 0 and "partitions but train.num_workers is 3" in bad.stderr, bad.stderr[-3000:]
    assert "local Ray instance" not in bad.stderr
