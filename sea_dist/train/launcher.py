"""Starts a run: one local process (full-graph mode) or a Ray Train ``TorchTrainer``.

The driver resolves what every worker must agree on before any starts — the dataset root,
the run name, the checks of :mod:`sea_dist.train.preflight` — and afterwards reads
``summary.json`` back to print the result table. Ray-specific code lives here and in
:mod:`sea_dist.train.ray_policy`, nowhere else in the training path.
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

import torch

from sea_dist.config import Config
from sea_dist.config_cli import ConfigError, apply_overrides, config_to_dict
from sea_dist.data.dataset import load_meta, make_filesystem
from sea_dist.data.synthetic import default_dataset_root
from sea_dist.ops.publish import Publisher, config_fingerprint
from sea_dist.ops.retry import configure_storage, with_retries
from sea_dist.ops.metrics import (
    MetricsIdentity,
    TrainingMetrics,
    driver_port,
    push_run_result,
    worker_port,
)
from sea_dist.train.checkpoint import load_checkpoint, load_sharded_checkpoint
from sea_dist.train.preflight import (  # noqa: F401 - re-exported for callers of the launcher
    USER_ERRORS,
    check_output_dataset,
    check_warm_start,
    resolve_paths,
    user_error_in,
)
from sea_dist.train.ray_policy import (
    RAY_LOCAL_ENV,
    RAY_QUIET_ENV,
    WORKER_ENV,
    quiet_worker_logs,
    set_default_env,
    user_errors_are_final,
)
from sea_dist.train.distributed import WorkerContext

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
EPOCH_END_STEP = 99_999_999
LOCAL_NODE_IP = "127.0.0.2"  # loopback (127.0.0.0/8) that Ray does not rewrite  # sorts an epoch-end checkpoint after that epoch's step ones


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
    """The manifest when this data version was already published with this config."""
    if cfg.output.republish or cfg.train.resume:
        return None
    manifest = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url).read_manifest()
    if (
        manifest is not None
        and manifest.get("dataset_version") == dataset_version
        and manifest.get("config_fingerprint") == config_fingerprint(config_to_dict(cfg))
    ):
        return manifest
    return None


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


def _worker_metrics(cfg: Config, rank: str, local_rank: int, dataset_version: str):
    if not cfg.metrics.port:
        return None
    metrics = TrainingMetrics(MetricsIdentity(cfg.train.run_name, rank, dataset_version))
    metrics.serve(cfg.metrics.host, worker_port(cfg.metrics.port, local_rank))
    return metrics


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
    metrics = _worker_metrics(cfg, "0", 0, dataset_version)
    trainer = Trainer(cfg, ctx, resume_state=resume_state, metrics=metrics)
    summary = trainer.fit()
    trainer.write_outputs(summary)
    return summary


# ---- Ray Train: sampled mode ----------------------------------------------------------------
def ray_train_worker(loop_config: dict) -> None:
    """``train_loop_per_worker``: runs in every Ray Train worker process."""
    import ray.train
    import ray.train.torch

    cfg = apply_overrides(Config(), loop_config["config"])
    import sea_dist.train.loop  # noqa: F401  heavy imports (torch, DGL) before the thread settings below
    dataset_version = loop_config["dataset_version"]
    quiet_worker_logs()
    # Ray sets OMP_NUM_THREADS=1 in workers (ray-project/ray#15718): give torch the CPUs we own.
    torch.set_num_threads(max(int(cfg.train.cpus_per_worker), 1))
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(_flat_metrics(metrics), checkpoint=checkpoint)

    ctx = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=device,
        report=report,
    )
    try:
        _train_in_worker(cfg, ctx, context, device, dataset_version)
    except USER_ERRORS:
        # The driver reports a data or configuration error as one line (and Ray does not
        # retry it): no traceback from every worker on top.
        logging.getLogger("ray.train.v2._internal.util").setLevel(logging.CRITICAL)
        raise


def _train_in_worker(cfg: Config, ctx: WorkerContext, context, device, dataset_version: str) -> None:
    import ray.train

    from sea_dist.train.loop import Trainer  # heavy imports only where training happens

    configure_storage(cfg.data)  # a worker process starts with the defaults
    resume_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and cfg.train.partitioned:
        # only state.pt and this rank's table shard, not every rank's (as_directory would)
        resume_state = load_sharded_checkpoint(checkpoint.filesystem, checkpoint.path, ctx.rank, device)
    elif checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = load_checkpoint(directory, map_location=device)
    metrics = _worker_metrics(cfg, str(ctx.rank), context.get_local_rank(), dataset_version)
    trainer = Trainer(cfg, ctx, resume_state=resume_state, metrics=metrics)  # the mode: its batch source
    summary = trainer.fit()
    trainer.write_outputs(summary)  # a collective in partitioned mode; rank 0 writes otherwise


def _flat_metrics(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_metrics(value, name + "/"))
        else:
            flat[name] = value
    return flat


def storage_for(cfg: Config):
    """(storage_path, storage_filesystem) for Ray's RunConfig. S3 goes through our s3fs client
    (endpoint, botocore retry mode and timeouts from ``data.s3_*``), not pyarrow's own."""
    path = cfg.train.storage_path
    if path.startswith(("s3://", "s3a://")):
        import pyarrow.fs

        fs, bare = make_filesystem(path, cfg.data.s3_endpoint_url)
        return bare, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
    return path, None


class DriverMetricsCallback:
    """Exports run-level series from the Ray Train controller (the driver side of a run).

    Built lazily on the controller: the callback is pickled there, a registry is not.
    """

    def __init__(self, cfg: Config, dataset_version: str):
        self.host, self.port = cfg.metrics.host, driver_port(cfg.metrics.port)
        self.identity = MetricsIdentity(cfg.train.run_name, "driver", dataset_version)
        self.metrics = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self.metrics is None:
            self.metrics = TrainingMetrics(self.identity)
            self.metrics.serve(self.host, self.port)
        if not metrics:
            return
        first = metrics[0]
        if checkpoint is not None:
            self.metrics.record_checkpoint(_directory_size(checkpoint))
        if first.get("kind") != "epoch":
            return
        losses = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("loss/")}
        evaluations: dict[str, dict] = {}
        for key, value in first.items():
            split, _, name = key.partition("/")
            if split in ("valid", "test") and name:
                evaluations.setdefault(split, {})[name] = value
        total_edges_per_s = sum(m.get("train_edges_per_s", 0.0) for m in metrics)
        self.metrics.record_epoch(int(first.get("epoch", 0)), losses, evaluations, total_edges_per_s)

    def after_exception(self, run_context, worker_exceptions) -> None:
        pass


def _directory_size(checkpoint) -> int:
    try:
        fs, path = checkpoint.filesystem, checkpoint.path
        import pyarrow.fs

        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
        return int(sum(i.size or 0 for i in infos))
    except Exception:  # noqa: BLE001 - a size is informative only
        return 0


def run_ray(cfg: Config, dataset_version: str = "") -> None:
    set_default_env(RAY_QUIET_ENV)
    if not os.environ.get("RAY_ADDRESS"):
        set_default_env(RAY_LOCAL_ENV)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # A cluster we start ourselves is one machine: keep it on loopback. Ray swaps
            # 127.0.0.1 for the machine's routable address; any other loopback address is kept.
            # Asked for more worker CPUs than the machine has, it oversubscribes (with a
            # warning) rather than waiting forever for resources that cannot appear.
            wanted = cfg.train.num_workers * cfg.train.cpus_per_worker
            cores = os.cpu_count() or 1
            if wanted > cores:
                log.warning("local Ray: %d worker CPUs requested on %d cores; oversubscribing", wanted, cores)
            context = ray.init(
                num_cpus=max(wanted, cores),
                _node_ip_address=LOCAL_NODE_IP,
                _temp_dir=os.environ.get("SEA_DIST_RAY_TMPDIR") or None,
                runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
                logging_level=logging.WARNING,  # Ray's start-up chatter; our own line below
            )
            log.info(
                "local Ray instance on %s with %d CPUs (dashboard http://%s)",
                LOCAL_NODE_IP, max(wanted, cores), context.dashboard_url or "off",
            )
    use_gpu = bool(cfg.train.use_gpu or cfg.train.gpus_per_worker > 0)
    resources = {"CPU": cfg.train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker or 1
    storage_path, storage_fs = storage_for(cfg)
    trainer = TorchTrainer(
        ray_train_worker,
        train_loop_config={"config": config_to_dict(cfg), "dataset_version": dataset_version},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.train.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's own INFO lines (resource requests, worker placement, one "Checkpoint
            # successfully created" per report) would outnumber our epoch lines.
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}},
            callbacks=[_as_ray_callback(DriverMetricsCallback(cfg, dataset_version))]
            if cfg.metrics.port
            else None,
        ),
    )
    try:
        with user_errors_are_final():
            trainer.fit()
    except Exception as error:  # Ray wraps worker errors; surface a user error as itself
        cause = user_error_in(error)
        if cause is not None:
            raise cause from None
        raise


def _as_ray_callback(callback: DriverMetricsCallback):
    from ray.train import UserCallback

    class _Callback(UserCallback):
        def __init__(self, inner):
            self.inner = inner

        def after_report(self, run_context, metrics, checkpoint):
            self.inner.after_report(run_context, metrics, checkpoint)

    return _Callback(callback)
