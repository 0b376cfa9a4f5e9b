"""Sampled and partitioned runs on Ray Train: the driver's ``TorchTrainer`` and each worker's entry.

The launcher (:mod:`sea_dist.train.launcher`) decides what to run; this module is the part of
the driver and of the workers that talks to Ray Train (with the failure policy of
:mod:`sea_dist.train.ray_policy`). Nothing else in the training path imports Ray: a worker
sees a :class:`~sea_dist.runtime.distributed.WorkerContext`.
"""
from __future__ import annotations

import logging
import os

import torch

from sea_dist.config import Config, apply_overrides, config_to_dict
from sea_dist.ops.metrics import MetricsIdentity, TrainingMetrics, driver_port, worker_metrics
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.retry import configure_storage
from sea_dist.train.checkpoint import load_checkpoint, load_sharded_checkpoint
from sea_dist.train.preflight import USER_ERRORS, user_error_in
from sea_dist.train.ray_policy import (
    RAY_LOCAL_ENV,
    RAY_QUIET_ENV,
    WORKER_ENV,
    quiet_worker_logs,
    set_default_env,
    user_errors_are_final,
)

__all__ = ["ray_train_worker", "storage_for", "DriverMetricsCallback", "run_ray"]

log = logging.getLogger(__name__)

LOCAL_NODE_IP = "127.0.0.2"  # loopback (127.0.0.0/8) that Ray does not rewrite


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
    metrics = worker_metrics(cfg, str(ctx.rank), context.get_local_rank(), dataset_version)
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
