"""Starts a run: one local process (full-graph mode) or a Ray Train ``TorchTrainer``.

The driver resolves what every worker must agree on before any starts — the dataset root,
the run name, the checks of :mod:`sea_dist.train.preflight` — and afterwards reads
``summary.json`` back to print the result table. Ray-specific code lives in
:mod:`sea_dist.train.ray_run` and :mod:`sea_dist.train.ray_policy`, nowhere else in the
training path.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import secrets
import shutil
import time
from dataclasses import replace

from sea_dist.config import Config, ConfigError, config_to_dict
from sea_dist.data.meta import load_meta
from sea_dist.ops.metrics import MetricsIdentity, push_run_result, worker_metrics
from sea_dist.ops.publish import Publisher, config_fingerprint
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.sources.synthetic import default_dataset_root
from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.retry import configure_storage, with_retries
from sea_dist.train.checkpoint import load_checkpoint
from sea_dist.train.preflight import check_output_dataset, check_warm_start, resolve_paths
from sea_dist.train.ray_run import run_ray

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
EPOCH_END_STEP = 99_999_999  # sorts an epoch-end checkpoint after that epoch's step ones


def resolve_config(cfg: Config) -> Config:
    """Fill in what defaults leave open: the default dataset, the run name, storage; every
    local path absolute (:func:`resolve_paths`)."""
    cfg = resolve_paths(cfg)
    data, train = cfg.data, cfg.train
    if not data.root:
        data = replace(data, root=default_dataset_root())
    if not train.run_name:
        train = replace(train, run_name=_previous_run_name(cfg) if train.resume else _new_run_name())
    if not train.storage_path:
        train = replace(train, storage_path=_join(cfg.output.output_dir, "checkpoints"))
    return replace(cfg, data=data, train=train)


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def _new_run_name() -> str:
    return time.strftime("sea-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def _previous_run_name(cfg: Config) -> str:
    fs, path = make_filesystem(cfg.output.output_dir, cfg.data.s3_endpoint_url)
    record = posixpath.join(path, RUN_RECORD)
    if not fs.exists(record):
        raise ConfigError(
            f"--resume: no {RUN_RECORD} in {cfg.output.output_dir} and no train.run_name given; "
            "point --output-dir at the run to continue or set train.run_name"
        )
    with fs.open(record) as f:
        return json.load(f)["run_name"]


def _write_run_record(cfg: Config) -> None:
    fs, path = make_filesystem(cfg.output.output_dir, cfg.data.s3_endpoint_url)
    fs.makedirs(path, exist_ok=True)
    with fs.open(posixpath.join(path, RUN_RECORD), "w") as f:
        json.dump({"run_name": cfg.train.run_name, "storage_path": cfg.train.storage_path}, f)


def read_summary(cfg: Config) -> dict:
    """The published model's summary (through MANIFEST.json)."""
    return Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url).read_published_json("summary.json")


def already_published(cfg: Config, dataset_version: str) -> dict | None:
    """The manifest when this data version was already published with this config, so there is
    nothing to train: a cron rerun of the same data, or a ``--resume`` of the very run that
    published it (it finished; resuming it would only start a cluster to train zero steps).
    A resume of another run, or any run with ``output.republish``, trains."""
    if cfg.output.republish:
        return None
    manifest = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url).read_manifest()
    if (
        manifest is None
        or manifest.get("dataset_version") != dataset_version
        or manifest.get("config_fingerprint") != config_fingerprint(config_to_dict(cfg))
    ):
        return None
    if cfg.train.resume and manifest.get("run_id") != cfg.train.run_name:
        return None
    return manifest


def run(cfg: Config) -> dict:
    cfg = resolve_config(cfg)
    configure_storage(cfg.data)  # botocore retry mode, timeouts, our retry budget (data.s3_*)
    # Configuration and data problems are found here, in the driver, before any worker
    # starts: they fail once, with one message (transient storage faults are retried).
    meta = with_retries(lambda: load_meta(cfg.data.root, cfg.data.s3_endpoint_url), f"reading {cfg.data.root}")
    check_warm_start(cfg)
    check_output_dataset(cfg, meta)
    if cfg.train.partitioned:
        from sea_dist.prepare.job import load_prepared, run_prepare

        # the prepared version for this data and these settings, built only when missing
        if cfg.data.prepared:
            prepared = load_prepared(cfg.data.prepared, cfg.data.s3_endpoint_url)
        else:
            prepared = run_prepare(cfg)
            cfg = replace(cfg, data=replace(cfg.data, prepared=prepared.uri))
        if prepared.num_parts != cfg.train.num_workers:
            raise ConfigError(
                f"{cfg.data.prepared} has {prepared.num_parts} partitions but train.num_workers is "
                f"{cfg.train.num_workers}: each worker trains exactly one partition"
            )
    published = already_published(cfg, meta.version)
    if published is not None:
        if cfg.train.resume:
            log.info(
                "run %s finished and was published (%s); nothing to resume "
                "(raise train.epochs to train it further, output.republish=true to train again)",
                published["run_id"], published["published_at"],
            )
        else:
            log.info(
                "dataset version %s with this config is already published as run %s (%s); "
                "nothing to do (output.republish=true to train again)",
                meta.version, published["run_id"], published["published_at"],
            )
        return read_summary(cfg)
    _write_run_record(cfg)
    identity = MetricsIdentity(cfg.train.run_name, "driver", meta.version)
    started = time.monotonic()
    try:
        if cfg.train.full_graph:
            run_local(cfg, meta.version)
        else:
            run_ray(cfg, meta.version)
        summary = read_summary(cfg)
    except BaseException:
        if cfg.metrics.pushgateway_url:
            _push_quietly(cfg, identity, False, time.monotonic() - started)
        raise
    if cfg.metrics.pushgateway_url:
        finals = {"test": summary["test"], "valid": summary["valid"]}
        _push_quietly(cfg, identity, True, time.monotonic() - started, finals)
    return summary


def _push_quietly(cfg: Config, identity, succeeded: bool, duration_s: float, finals=None) -> None:
    """A Pushgateway outage must not fail (or mask the error of) the training run."""
    try:
        push_run_result(
            cfg.metrics.pushgateway_url, cfg.metrics.push_job, identity, succeeded, duration_s, finals
        )
    except Exception as error:  # noqa: BLE001 - reported, never fatal
        log.warning("could not push run metrics to %s: %s", cfg.metrics.pushgateway_url, error)


# ---- one process: full-graph mode -----------------------------------------------------------
class LocalCheckpoints:
    """Checkpoints of a run without Ray: ``<storage>/<run>/ckpt_EEEEE_SSSSSSSS/`` (epoch, and
    the next step for a mid-epoch one; epoch ends sort last), newest kept plus the previous
    one (a crash while writing the newest still leaves a good one)."""

    def __init__(self, storage_path: str, run_name: str, keep: int = 2):
        self.root = os.path.join(storage_path, run_name)
        self.keep = keep

    def latest(self) -> str | None:
        if not os.path.isdir(self.root):
            return None
        found = self._complete()
        return os.path.join(self.root, found[-1]) if found else None

    def _complete(self) -> list[str]:
        return sorted(d for d in os.listdir(self.root) if d.startswith("ckpt_") and "." not in d)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        step = metrics.get("step", EPOCH_END_STEP) if metrics.get("kind") == "step" else EPOCH_END_STEP
        target = os.path.join(self.root, f"ckpt_{metrics['epoch']:05d}_{step:08d}")
        staging = target + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # only complete checkpoints carry the epoch_ name
        for old in self._complete()[: -self.keep]:
            shutil.rmtree(os.path.join(self.root, old))


def run_local(cfg: Config, dataset_version: str = "") -> dict:
    """Full-graph mode (or a 1-process sampled run) in this process, no Ray."""
    from sea_dist.train.loop import Trainer  # heavy imports only where training happens

    configure_storage(cfg.data)

    if "://" in cfg.train.storage_path:
        raise ConfigError("full-graph mode keeps checkpoints on a local path; set train.storage_path")
    checkpoints = LocalCheckpoints(cfg.train.storage_path, cfg.train.run_name)
    resume_state = None
    if cfg.train.resume:
        latest = checkpoints.latest()
        if latest is None:
            raise ConfigError(f"--resume: no checkpoint under {checkpoints.root}")
        resume_state = load_checkpoint(latest)
    ctx = WorkerContext(report=checkpoints.report)
    metrics = worker_metrics(cfg, "0", 0, dataset_version)
    trainer = Trainer(cfg, ctx, resume_state=resume_state, metrics=metrics)
    summary = trainer.fit()
    trainer.write_outputs(summary)
    return summary
