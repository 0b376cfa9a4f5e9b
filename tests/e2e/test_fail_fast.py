"""Configuration and data errors through the real job: one `error:` line, exit 2, no traceback,
and no Ray restart (train.max_failures is left at its default, 2: it is for worker failures)."""
from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from tests.e2e.conftest import REPO, run_job
from tests.e2e.test_bad_input import _nan_feature

RAY_STARTED = "local Ray instance"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _fake_model(output_dir, dataset_name: str) -> None:
    """A model of ``dataset_name`` published in ``output_dir`` (summary.json only)."""
    from sea_dist.ops.publish import Publisher

    publisher = Publisher(str(output_dir))
    publish_id = publisher.new_publish_id("earlier")
    staged = output_dir / "runs" / publish_id
    staged.mkdir(parents=True)
    (staged / "summary.json").write_text(json.dumps({"dataset": {"name": dataset_name}}))
    publisher.publish("earlier", publish_id, "v0", "fp")


def test_a_missing_warm_start_source_fails_before_ray_starts(tiny_root, tmp_path):
    result = run_job([f"data.root={tiny_root}", "--output-dir", str(tmp_path / "out"),
                      "--warm-start", str(tmp_path / "no-model")])
    assert result.returncode == 2, result.stderr[-3000:]
    assert _error_lines(result.stderr) == [f"error: --warm-start {tmp_path / 'no-model'}: nothing published there (no MANIFEST.json)"]
    assert RAY_STARTED not in result.stderr and "Traceback" not in result.stderr


def test_another_datasets_model_is_kept_unless_republish(tiny_root, tmp_path):
    out = tmp_path / "out"
    _fake_model(out, "someone-elses-catalog")
    manifest = (out / "MANIFEST.json").read_text()
    result = run_job([f"data.root={tiny_root}", "--output-dir", str(out)])
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _error_lines(result.stderr)
    assert "'someone-elses-catalog'" in line and "'tiny-e2e'" in line and "output.republish=true" in line
    assert RAY_STARTED not in result.stderr and (out / "MANIFEST.json").read_text() == manifest


@pytest.mark.slow
def test_bad_data_inside_workers_fails_once_without_tracebacks(tiny_root, tmp_path, monkeypatch):
    """The NaN is found only when the workers load the features (the driver reads dataset.json
    only); Ray must not restart the worker group for it, and the relative data.root names the
    folder in the submitter's working directory."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    where, _ = _nan_feature(str(root))
    env = {"SEA_DIST_RAY_TMPDIR": tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")}
    smoke = f"{REPO}/configs/smoke.toml"
    result = run_job(["--config", smoke, "data.root=data", "--output-dir", "out"], env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _error_lines(result.stderr)
    assert where in line and "NaN" in line  # an absolute path: resolved against cwd
    # no worker traceback (Ray's own actors may still log theirs on an overloaded machine)
    assert "Error in training function" not in result.stderr
    assert "sea_dist.storage.errors.DatasetError" not in result.stderr
    assert not [l for l in result.stderr.splitlines() if "(RayTrainWorker" in l and "Traceback" in l]
    assert RAY_STARTED in result.stderr and not (tmp_path / "out" / "MANIFEST.json").exists()
