"""Prometheus metrics of a training run (prometheus-client), one endpoint per process.

Every series carries ``run_id``, ``rank`` and ``dataset_version`` labels. Ports: the driver
serves on ``base - 1`` and the worker with local rank r on ``base + r``, so several workers on
one node never collide (``metrics.port``; 0 disables). Each process uses its own registry, so
nothing leaks between runs in one interpreter (tests) and the default process collectors
(``process_resident_memory_bytes`` ...) are registered into it explicitly.

For batch semantics the driver pushes the final figures to a Pushgateway with push-add: a
failed run only updates ``sea_dist_last_failure_timestamp_seconds``, so it never erases the
last success.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    pushadd_to_gateway,
    start_http_server,
)

log = logging.getLogger(__name__)

LABELS = ("run_id", "rank", "dataset_version")


@dataclass(frozen=True)
class MetricsIdentity:
    run_id: str
    rank: str  # "driver" or the worker's world rank
    dataset_version: str

    def labels(self) -> dict[str, str]:
        return {"run_id": self.run_id, "rank": self.rank, "dataset_version": self.dataset_version}


class TrainingMetrics:
    """The series a worker exports while it trains."""

    def __init__(self, identity: MetricsIdentity, registry: CollectorRegistry | None = None):
        self.identity = identity
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, LABELS
        self.loss = Gauge("sea_dist_loss", "Mean loss of the last epoch by term", labels + ("term",), registry=r)
        self.edges = Counter("sea_dist_train_edges", "Training triples processed", labels, registry=r)
        self.edges_per_second = Gauge(
            "sea_dist_train_edges_per_second", "Training triples per second in the last epoch", labels, registry=r
        )
        self.batches = Counter("sea_dist_batches", "Training batches processed", labels, registry=r)
        self.sampling_seconds = Counter(
            "sea_dist_sampling_seconds", "Seconds spent sampling computation graphs", labels, registry=r
        )
        self.fetch_seconds = Counter(
            "sea_dist_feature_fetch_seconds", "Seconds spent fetching feature rows", labels, registry=r
        )
        self.fetch_bytes = Counter(
            "sea_dist_feature_fetch_bytes", "Bytes of feature rows fetched", labels, registry=r
        )
        self.cache_hit_ratio = Gauge(
            "sea_dist_feature_cache_hit_ratio", "Share of feature rows served from the cache", labels, registry=r
        )
        self.eval_metric = Gauge(
            "sea_dist_eval_metric", "Latest evaluation metric", labels + ("split", "metric"), registry=r
        )
        self.epoch = Gauge("sea_dist_epoch", "Last finished epoch", labels, registry=r)
        self.checkpoint_time = Gauge(
            "sea_dist_last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint", labels, registry=r
        )
        self.checkpoint_bytes = Gauge(
            "sea_dist_last_checkpoint_bytes", "Size of the last checkpoint", labels, registry=r
        )
        self.gpu_memory = Gauge(
            "sea_dist_gpu_memory_allocated_bytes", "GPU memory allocated by torch", labels, registry=r
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, ...
        self._labels = identity.labels()

    def _l(self, series, **extra):
        return series.labels(**self._labels, **extra)

    def record_step(self, edges: int, sampling_s: float, fetch_s: float, fetch_bytes: int) -> None:
        self._l(self.edges).inc(edges)
        self._l(self.batches).inc()
        self._l(self.sampling_seconds).inc(max(sampling_s, 0.0))
        self._l(self.fetch_seconds).inc(max(fetch_s, 0.0))
        self._l(self.fetch_bytes).inc(fetch_bytes)

    def record_epoch(self, epoch: int, losses: dict, evaluations: dict[str, dict], edges_per_s: float) -> None:
        for term, value in losses.items():
            self._l(self.loss, term=term).set(value)
        for split, metrics in evaluations.items():
            for name, value in metrics.items():
                self._l(self.eval_metric, split=split, metric=name).set(value)
        self._l(self.epoch).set(epoch)
        self._l(self.edges_per_second).set(edges_per_s)
        self.update_memory()

    def record_cache(self, hit_ratio: float) -> None:
        self._l(self.cache_hit_ratio).set(hit_ratio)

    def record_checkpoint(self, size_bytes: int) -> None:
        self._l(self.checkpoint_time).set(time.time())
        self._l(self.checkpoint_bytes).set(size_bytes)

    def update_memory(self) -> None:
        if torch.cuda.is_available():
            self._l(self.gpu_memory).set(torch.cuda.memory_allocated())

    def serve(self, host: str, port: int):
        """Start the /metrics endpoint; returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)
        return server


def worker_metrics(cfg: Any, rank: str, local_rank: int, dataset_version: str) -> TrainingMetrics | None:
    """One worker's metrics, served on its port; None when ``metrics.port`` is 0 (off).

    ``cfg`` is a :class:`sea_dist.config.Config` (its ``metrics`` and ``train.run_name``).
    """
    if not cfg.metrics.port:
        return None
    metrics = TrainingMetrics(MetricsIdentity(cfg.train.run_name, rank, dataset_version))
    metrics.serve(cfg.metrics.host, worker_port(cfg.metrics.port, local_rank))
    return metrics


def worker_port(base_port: int, local_rank: int) -> int:
    return base_port + local_rank


def driver_port(base_port: int) -> int:
    return base_port - 1


def push_run_result(
    gateway: str,
    job: str,
    identity: MetricsIdentity,
    succeeded: bool,
    duration_s: float,
    final_metrics: dict[str, dict] | None = None,
) -> None:
    """Push-add the run's outcome (Prometheus batch-job convention)."""
    registry = CollectorRegistry()
    labels = identity.labels()
    names = list(labels)
    if succeeded:
        Gauge("sea_dist_last_success_timestamp_seconds", "Unix time of the last successful run", names,
              registry=registry).labels(**labels).set(time.time())
        Gauge("sea_dist_run_duration_seconds", "Wall time of the last successful run", names,
              registry=registry).labels(**labels).set(duration_s)
        final = Gauge("sea_dist_final_metric", "Test/valid metric at the best epoch of the last run",
                      names + ["split", "metric"], registry=registry)
        for split, metrics in (final_metrics or {}).items():
            for name, value in metrics.items():
                final.labels(**labels, split=split, metric=name).set(value)
    else:
        Gauge("sea_dist_last_failure_timestamp_seconds", "Unix time of the last failed run", names,
              registry=registry).labels(**labels).set(time.time())
    # One group per job (deployment): push-add replaces series of the same name only, so a
    # success replaces the previous success and a failure leaves it in place.
    pushadd_to_gateway(gateway, job=job, registry=registry)
