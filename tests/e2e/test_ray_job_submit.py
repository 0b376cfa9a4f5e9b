"""`ray job submit` against a local Ray head on loopback, as the README describes: the head is
started with cluster/local_cluster.sh (its own ports, so it never collides with another Ray
instance on the machine) and stopped by the processes it started, never `ray stop`."""
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import REPO, published_summary
from tests.e2e.test_local_cluster import BASH, SCRIPT, _free_base, _read_env_file

RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.mark.slow
@pytest.mark.skipif(BASH is None or shutil.which("setsid") is None, reason="needs bash and setsid")
def test_ray_job_submit_runs_the_training_job(tiny_root, tmp_path):
    started = time.monotonic()
    state = tmp_path / "cluster"
    base = _free_base(40)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env.setdefault("RAY_AUTH_MODE", "token")
    up = subprocess.run(
        [BASH, str(SCRIPT), "up", "--state-dir", str(state), "--workers", "0", "--head-cpus", "3",
         "--port", str(base), "--dashboard-port", str(base + 30), "--timeout", "120"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    out = tmp_path / "job-out"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        job_env = dict(env, **_read_env_file(state / "cluster.env"))
        dashboard = job_env["RAY_API_SERVER_ADDRESS"]
        assert dashboard.startswith("http://127.0.0.1:")
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
             "python", "jobs/train.py", "--config", "configs/smoke.toml", "--output-dir", str(out),
             f"data.root={tiny_root}"],
            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=600,
        )
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        assert "succeeded" in log.lower()
        summary = published_summary(out)
        assert summary["mode"] == "sampled" and summary["world_size"] == 2 and summary["epochs_run"] == 2
        assert "Recall@20" in log  # the job's final table reached the submitter
    finally:
        down = subprocess.run([BASH, str(SCRIPT), "down", "--state-dir", str(state), "--purge"],
                              env=env, capture_output=True, text=True, timeout=120)
    print(f"ray job submit test: {time.monotonic() - started:.1f}s")
    assert down.returncode == 0, down.stdout + down.stderr
