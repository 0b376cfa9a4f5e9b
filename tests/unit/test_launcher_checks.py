"""What the launcher settles in the driver before any worker starts (sea_dist.train.preflight,
sea_dist.train.ray_policy):
relative paths, the warm-start source, which dataset an output directory publishes, and which
failures Ray may retry."""
from __future__ import annotations

import json
import os

import pytest

from sea_dist.config import Config
from sea_dist.config import ConfigError, apply_overrides
from sea_dist.storage.errors import DatasetError
from sea_dist.data.meta import DatasetMeta
from sea_dist.ops.publish import Publisher
from sea_dist.train.launcher import resolve_config
from sea_dist.train.preflight import check_output_dataset, check_warm_start, resolve_paths, user_error_in


def _cfg(*overrides: str) -> Config:
    return apply_overrides(Config(), list(overrides))


# ------------------------------------------------------------------------------------------
# Relative paths
# ------------------------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_submitters_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(_cfg(
        "data.root=data/ml-100k", "data.prepared=data/ml-100k/prepared/p2-x", "output.output_dir=runs/a",
        "train.storage_path=ckpt", "train.warm_start=runs/old", "prepare.work_dir=scratch",
    ))
    assert cfg.data.root == str(tmp_path / "data" / "ml-100k")
    assert cfg.data.prepared == str(tmp_path / "data" / "ml-100k" / "prepared" / "p2-x")
    assert cfg.output.output_dir == str(tmp_path / "runs" / "a")
    assert cfg.train.storage_path == str(tmp_path / "ckpt")
    assert cfg.train.warm_start == str(tmp_path / "runs" / "old")
    assert cfg.prepare.work_dir == str(tmp_path / "scratch")


def test_uris_empty_values_and_latest_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(_cfg(
        "data.root=s3://bucket/catalog", "output.output_dir=file:///srv/models",
        "train.storage_path=s3://bucket/ckpt", "train.warm_start=latest",
    ))
    assert cfg.data.root == "s3://bucket/catalog" and cfg.output.output_dir == "file:///srv/models"
    assert cfg.train.storage_path == "s3://bucket/ckpt" and cfg.train.warm_start == "latest"
    assert cfg.data.prepared == "" and cfg.prepare.work_dir == ""


def test_resolved_config_puts_default_checkpoints_under_the_absolute_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(_cfg("data.root=d", "output.output_dir=runs/x", "train.run_name=r1"))
    assert cfg.train.storage_path == str(tmp_path / "runs" / "x" / "checkpoints")
    assert os.path.isabs(cfg.data.root)


# ------------------------------------------------------------------------------------------
# Warm start and output-directory checks
# ------------------------------------------------------------------------------------------
def _publish(output_dir, dataset_name: str) -> None:
    """A published model of ``dataset_name`` (summary.json only), through the Publisher."""
    publisher = Publisher(str(output_dir))
    publish_id = publisher.new_publish_id("old-run")
    staged = output_dir / "runs" / publish_id
    staged.mkdir(parents=True)
    (staged / "summary.json").write_text(json.dumps({"dataset": {"name": dataset_name, "version": "v1"}}))
    publisher.publish("old-run", publish_id, "v1", "fingerprint")


def _meta(name: str) -> DatasetMeta:
    return DatasetMeta(name=name, version="v2", n_users=1, n_items=1, n_interactions=1,
                       modalities={"image": 2}, splits={"train": 1})


def test_another_datasets_model_is_not_replaced_without_consent(tmp_path):
    out = tmp_path / "out"
    _publish(out, "baby")
    cfg = _cfg(f"output.output_dir={out}")
    with pytest.raises(ConfigError, match=r"'baby'.*'ml-100k'.*output\.republish=true"):
        check_output_dataset(cfg, _meta("ml-100k"))
    check_output_dataset(cfg, _meta("baby"))  # tonight's version of the same dataset
    check_output_dataset(_cfg(f"output.output_dir={out}", "output.republish=true"), _meta("ml-100k"))
    check_output_dataset(_cfg(f"output.output_dir={tmp_path / 'empty'}"), _meta("ml-100k"))


def test_only_a_resume_of_the_publishing_run_itself_is_already_done(tmp_path):
    """A finished, published run resumed with its own config has nothing left to train (no
    cluster is started for it); a resume of another run, more epochs, other data or
    output.republish train."""
    from sea_dist.config import config_to_dict
    from sea_dist.ops.publish import config_fingerprint
    from sea_dist.train.launcher import already_published

    out = tmp_path / "out"
    base = [f"output.output_dir={out}", "train.epochs=2"]
    publisher = Publisher(str(out))
    publish_id = publisher.new_publish_id("run-a")
    (out / "runs" / publish_id).mkdir(parents=True)
    (out / "runs" / publish_id / "summary.json").write_text("{}")
    publisher.publish("run-a", publish_id, "v1", config_fingerprint(config_to_dict(_cfg(*base))))

    assert already_published(_cfg(*base, "train.resume=true", "train.run_name=run-a"), "v1")["run_id"] == "run-a"
    assert already_published(_cfg(*base, "train.run_name=nightly-2"), "v1")["run_id"] == "run-a"  # cron rerun
    assert already_published(_cfg(*base, "train.resume=true", "train.run_name=run-b"), "v1") is None
    assert already_published(_cfg(*base, "train.resume=true", "train.run_name=run-a"), "v2") is None
    assert already_published(_cfg(f"output.output_dir={out}", "train.epochs=3", "train.resume=true",
                                  "train.run_name=run-a"), "v1") is None
    assert already_published(_cfg(*base, "train.resume=true", "train.run_name=run-a",
                                  "output.republish=true"), "v1") is None


def test_warm_start_source_must_hold_a_model(tmp_path):
    with pytest.raises(ConfigError, match="nothing published"):
        check_warm_start(_cfg(f"train.warm_start={tmp_path / 'nothing'}"))
    _publish(tmp_path / "model", "baby")
    check_warm_start(_cfg(f"train.warm_start={tmp_path / 'model'}"))
    check_warm_start(_cfg("train.warm_start=latest"))  # the first night: nothing yet is fine


# ------------------------------------------------------------------------------------------
# Ray may retry worker failures, never data or configuration errors
# ------------------------------------------------------------------------------------------
def test_user_errors_are_found_through_rays_wrappers():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    data = DatasetError("features/text/part-0.parquet: NaN in row 3")
    wrapped = WorkerGroupError("worker 1 failed", {1: UserExceptionWithTraceback(data, "Traceback ...")})
    assert user_error_in(wrapped) is data
    as_text = WorkerGroupError("x", {0: RuntimeError("Traceback...\nsea_dist.config.checks.ConfigError: bad key")})
    found = user_error_in(as_text)
    assert isinstance(found, ConfigError) and str(found) == "bad key"
    assert user_error_in(WorkerGroupError("x", {0: RuntimeError("worker died")})) is None


def test_failure_policy_retries_worker_failures_only():
    from ray.train import FailureConfig
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from sea_dist.train.ray_policy import UserErrorsAreFinal

    policy = UserErrorsAreFinal(DefaultFailurePolicy(FailureConfig(max_failures=2)))
    crash = WorkerGroupError("x", {0: RuntimeError("worker died")})
    bad_data = WorkerGroupError("x", {0: UserExceptionWithTraceback(DatasetError("NaN"), "tb")})
    assert policy.make_decision(bad_data) == FailureDecision.RAISE  # first failure, no retry
    assert [policy.make_decision(crash) for _ in range(3)] == [
        FailureDecision.RETRY, FailureDecision.RETRY, FailureDecision.RAISE]  # max_failures=2


def test_the_policy_is_installed_only_for_one_fit():
    from ray.train.v2.api import data_parallel_trainer as module

    from sea_dist.train.ray_policy import user_errors_are_final

    original = module.create_failure_policy
    with user_errors_are_final():
        assert module.create_failure_policy is not original
    assert module.create_failure_policy is original
