"""`python jobs/train.py` end to end: full-graph mode on S3 (no secret leaks), and clear errors.

The sampled 2-worker Ray run with its hand-checked exports and `--resume` is the README option
examples' test (tests/e2e/test_readme_commands.py::test_options).
"""
import json
import os

import pytest

from tests.e2e.conftest import run_job

FAST = ["train.batch_size=512", "model.club_inner_steps=5", "eval.user_batch_size=128"]


@pytest.mark.slow
def test_full_graph_mode_reads_and_writes_s3(tiny_root, moto_s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3})
    fs.put(tiny_root, "e2e-bucket/data", recursive=True)
    canary = "sea-dist-canary-secret-7f3a9c"  # the run's S3 secret: must never appear in any output
    result = run_job(
        [
            "--full-graph",
            "--epochs",
            "2",
            "--output-dir",
            "s3://e2e-bucket/runs/one",
            "data.root=s3://e2e-bucket/data",
            f"data.s3_endpoint_url={moto_s3}",
            f"train.storage_path={tmp_path / 'ckpt'}",
            *FAST,
        ],
        env_extra={"AWS_SECRET_ACCESS_KEY": canary},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads(fs.cat("e2e-bucket/runs/one/MANIFEST.json"))
    summary = json.loads(fs.cat(f"e2e-bucket/runs/one/{manifest['prefix']}/summary.json"))
    assert summary["mode"] == "full_graph" and summary["epochs_run"] == 2
    assert "embeddings/items/part-00000.parquet" in manifest["files"]
    assert "Recall@20" in result.stdout
    # security: the secret is in no published file, checkpoint, metrics line or log
    leaks = [p for p in fs.find("e2e-bucket/runs") if canary.encode() in fs.cat(p)]
    for folder, _dirs, files in os.walk(tmp_path / "ckpt"):
        leaks += [os.path.join(folder, f) for f in files if canary.encode() in open(os.path.join(folder, f), "rb").read()]
    assert leaks == [] and canary not in result.stdout + result.stderr


def test_missing_dataset_root_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_job(["--full-graph", f"data.root={missing}", "--output-dir", str(tmp_path / "o")])
    assert result.returncode != 0
    assert str(missing) in result.stderr and "Traceback" not in result.stderr[-2000:]


def test_unknown_config_key_is_rejected(tmp_path):
    result = run_job(["model.no_such_knob=3"])
    assert result.returncode != 0 and "no_such_knob" in result.stderr
