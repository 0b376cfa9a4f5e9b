"""`ray job submit` against a local Ray head on 127.0.0.1, as the README describes."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.e2e.conftest import REPO, published_summary
from tests.e2e.test_metrics_scrape import _port_block

RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")


def _processes_of(temp_dir):
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if any(temp_dir in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _stop_head(temp_dir):
    """Stops only this head's processes (`ray stop` would end every cluster on the machine)."""
    procs = _processes_of(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        proc.kill()


@pytest.mark.slow
def test_ray_job_submit_runs_the_training_job(tiny_root, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="sea_rayjob_", dir="/tmp")
    gcs, dashboard = _port_block(1), _port_block(1)
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "job-out"
    started = time.monotonic()
    try:
        head = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
             f"--temp-dir={temp_dir}", "--num-cpus=3", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert head.returncode == 0, head.stdout + head.stderr
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
             "--", "python", "jobs/train.py", "--config", "configs/smoke.toml", "--output-dir", str(out),
             f"data.root={tiny_root}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        log = submit.stdout + submit.stderr
        assert submit.returncode == 0, log[-4000:]
        assert "succeeded" in log.lower()
        summary = published_summary(out)
        assert summary["mode"] == "sampled" and summary["world_size"] == 2 and summary["epochs_run"] == 2
        assert "Recall@20" in log  # the job's final table reached the submitter
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(f"ray job submit test: {time.monotonic() - started:.1f}s")
    assert not _processes_of(temp_dir)
