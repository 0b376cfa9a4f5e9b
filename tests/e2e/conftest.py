import os
import subprocess
import sys

import pytest

from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = SyntheticSpec(
    n_users=400, n_items=150, n_interactions=5000, modalities={"image": 16, "text": 8}, name="tiny-e2e"
)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_synthetic(TINY, str(tmp_path_factory.mktemp("tiny-e2e") / "data"))


def run_job(args, env_extra=None, timeout=600, cwd=REPO):
    """Runs ``python jobs/train.py ARGS`` as a user would; returns the CompletedProcess."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.pop("RAY_ADDRESS", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def published_summary(output_dir):
    """summary.json of the model published under ``output_dir`` (read through the manifest)."""
    from sea_dist.ops.publish import Publisher

    return Publisher(str(output_dir)).read_published_json("summary.json")


def published_path(output_dir, name):
    from sea_dist.ops.publish import Publisher

    return Publisher(str(output_dir)).published_file(name)
