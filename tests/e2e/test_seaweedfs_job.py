"""The whole partitioned job on SeaweedFS, a real S3 store that checks request signatures:
generate -> prepare -> partitioned train (2 Ray workers, checkpoints in the store) -> publish
-> read the model back through MANIFEST.json. Credentials come only from the environment.

moto (the other S3 in the tests) accepts any signature and is one implementation of
listings, multipart uploads and ranged reads; this run checks ours against another.
"""
import json
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

    # prepare, as its own job
    prep = _python(["jobs/prepare.py", *common, "train.num_workers=2"], env)
    assert prep.returncode == 0, prep.stderr[-3000:]
    prepared = json.loads(prep.stdout)
    assert prepared["partitions"]["num_parts"] == 2

    # partitioned training from the store; the driver finds the prepared version there
    result = run_job(["--epochs", "2", "--output-dir", out, *common, "train.partitioned=true", *FAST], env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "is up to date" in log

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
    finally:
        for key in store.env():
            os.environ.pop(key, None)
    assert summary["mode"] == "partitioned" and summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert manifest["dataset_version"] == prepared["dataset"]["version"]
    assert len(users) == 2  # one file per worker
    assert len(user_ids) == len(np.unique(user_ids)) == TINY.n_users and item_rows == TINY.n_items
    assert any(c.endswith("/state.pt") for c in checkpoints)  # Ray Train's checkpoints went to the store
    assert any(c.endswith("/rank-00001.pt") for c in checkpoints)
