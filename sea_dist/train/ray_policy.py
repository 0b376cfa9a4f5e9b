"""Ray settings that keep a run's console to its own lines and spend ``train.max_failures`` on
worker failures only. Ray is imported lazily: only the Ray path of the launcher uses this.
"""
from __future__ import annotations

import contextlib
import logging
import os

from sea_dist.train.preflight import user_error_in


#: Ray settings (environment, read by Ray in the driver and passed on to the Train controller
#: and workers) that keep a run's console to our own lines; a value the user set wins.
RAY_QUIET_ENV = {
    # Ray Train V2 tees every print() of a worker into the root logger as well, so each epoch
    # line would reach the console twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
#: Set in every training worker, wherever it runs.
WORKER_ENV = {
    # DGL picks its backend from this, or else prints that none was selected and writes
    # ~/.dgl/config.json (two lines on stderr, per process, on a fresh machine).
    "DGLBACKEND": "pytorch",
}
#: Only for a Ray instance this process starts on its own machine.
RAY_LOCAL_ENV = {
    # Token authentication, as Ray's default for a new local instance, but chosen explicitly:
    # Ray then skips its warning about having chosen it.
    "RAY_AUTH_MODE": "token",
    # Node preemption cannot happen on one's own machine; the watcher actor only adds an
    # error-level line from Ray's core at start-up. Clusters keep it (spot nodes, KubeRay).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def set_default_env(values: dict[str, str]) -> None:
    for key, value in values.items():
        os.environ.setdefault(key, value)


def quiet_worker_logs() -> None:
    """Ray Train logs every report's full metrics dict at INFO, drowning our epoch lines; the
    S3 client announces where it found credentials, once per worker."""
    for name in ("botocore", "aiobotocore", "s3fs"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as ray_train_context

        ray_train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):  # a Ray version without that module: keep its logs
        pass


class UserErrorsAreFinal:
    """Ray Train failure policy: ``train.max_failures`` is spent on worker failures only.

    A worker stopped by a data or configuration error fails the run at once (a restart would
    meet the same error); anything else goes to Ray's own policy. Built lazily so that Ray is
    imported only where it runs."""

    def __new__(cls, inner):
        from ray.train.v2._internal.execution.failure_handling import FailureDecision, FailurePolicy

        class Policy(FailurePolicy):
            def __init__(self, inner_policy):
                super().__init__(inner_policy.failure_config)
                self.inner = inner_policy

            def make_decision(self, training_failed_error):
                if user_error_in(training_failed_error) is not None:
                    return FailureDecision.RAISE
                return self.inner.make_decision(training_failed_error)

        return Policy(inner)


@contextlib.contextmanager
def user_errors_are_final():
    """Wraps Ray Train's failure policy for one ``fit`` (Ray has no public switch for this;
    on a Ray without the hook, every failure counts against max_failures, as before)."""
    try:
        from ray.train.v2.api import data_parallel_trainer as module

        original = module.create_failure_policy
    except (ImportError, AttributeError):
        yield
        return
    module.create_failure_policy = lambda failure_config: UserErrorsAreFinal(original(failure_config))
    try:
        yield
    finally:
        module.create_failure_policy = original
