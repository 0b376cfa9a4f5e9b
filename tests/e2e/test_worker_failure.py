"""Kill a training worker mid-epoch: Ray Train restarts the group from the latest (mid-epoch)
checkpoint, the run finishes, and its result matches an uninterrupted run with the same seed."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from tests.e2e.conftest import REPO, published_summary

ARGS = ["--epochs", "3", "train.batch_size=256", "train.checkpoint_every_steps=2", "train.max_failures=1",
        "train.patience=50", "model.club_inner_steps=5", "eval.user_batch_size=128"]


def _train_workers(temp_dir):
    """RayTrainWorker processes of the Ray instance whose temp dir is ``temp_dir``."""
    workers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "raylet" in cmdline and temp_dir in cmdline:
                workers += [c for c in proc.children(recursive=True) if "RayTrainWorker" in " ".join(c.cmdline())]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return workers


def _run(root, out, kill_after_epoch0=False, extra=()):
    temp_dir = tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")
    env = dict(os.environ, SEA_DIST_RAY_TMPDIR=temp_dir, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "jobs", "train.py"), "--output-dir", str(out), f"data.root={root}", *ARGS, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines, killed = [], {}

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if kill_after_epoch0 and not killed and "epoch    0 |" in line:
                time.sleep(1.5)  # a few steps into epoch 1, past its first step checkpoint
                victims = _train_workers(temp_dir)
                if victims:
                    victims[-1].send_signal(signal.SIGKILL)
                    killed["pid"], killed["at"] = victims[-1].pid, time.monotonic()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    rc = proc.wait(timeout=900)
    thread.join(timeout=30)
    return rc, "".join(lines), killed


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(tiny_root, tmp_path):
    rc, log, _ = _run(tiny_root, tmp_path / "clean")
    assert rc == 0, log[-3000:]
    clean = published_summary(tmp_path / "clean")

    rc, log, killed = _run(tiny_root, tmp_path / "killed", kill_after_epoch0=True)
    assert killed, "no RayTrainWorker process found to kill"
    assert rc == 0, log[-5000:]
    resumed = re.findall(r"resuming at step (\d+)", log)
    assert resumed, "the restarted workers did not resume mid-epoch:\n" + log[-3000:]
    summary = published_summary(tmp_path / "killed")
    assert summary["epochs_run"] == 3
    a, b = clean["valid"]["recall@20"], summary["valid"]["recall@20"]
    assert abs(a - b) <= 0.02 * a, (a, b)
    print(f"worker killed; resumed at step {resumed[0]} of epoch 1; valid recall@20 clean {a:.5f} vs killed {b:.5f}")


@pytest.mark.slow
def test_killed_partitioned_worker_resumes_from_its_table_shard(tiny_root, tmp_path):
    """Partitioned mode: every rank checkpoints its own table shard, Ray Train merges them, and
    the restarted group reads back state.pt plus each rank's own shard."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns("prepared"))
    rc, log, killed = _run(root, tmp_path / "killed", kill_after_epoch0=True, extra=["train.partitioned=true"])
    assert killed, "no RayTrainWorker process found to kill"
    assert rc == 0, log[-5000:]
    assert re.findall(r"resuming at step (\d+)", log), "no mid-epoch resume:\n" + log[-3000:]
    summary = published_summary(tmp_path / "killed")
    assert summary["mode"] == "partitioned" and summary["epochs_run"] == 3
    assert summary["valid"]["recall@20"] > 0
    checkpoints = [d for d, _, files in os.walk(tmp_path / "killed" / "checkpoints") if "state.pt" in files]
    assert checkpoints and all(
        {"rank-00000.pt", "rank-00001.pt"} <= set(os.listdir(d)) for d in checkpoints
    ), "a checkpoint without every rank's table shard"
