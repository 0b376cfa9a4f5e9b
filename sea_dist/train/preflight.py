"""What the driver settles before any worker starts: every local path made absolute against the
submitter's working directory, the warm-start source, which dataset an output directory
publishes; and which errors are the user's to fix (never retried by Ray, reported as one line).

Ray workers run elsewhere (their own working directory, other nodes) and Ray Train restarts a
failed worker group up to ``train.max_failures`` times: a configuration or data problem found
there would be found again on every attempt, so as much as possible is found here, once.
"""
from __future__ import annotations

import os
from dataclasses import replace

from sea_dist.config import Config
from sea_dist.config import ConfigError
from sea_dist.storage.errors import DatasetError
from sea_dist.data.meta import DatasetMeta
from sea_dist.ops.publish import Publisher, PublishError


def _absolute(path: str) -> str:
    """A local path made absolute against this process's working directory; URIs unchanged."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: Config) -> Config:
    """Every local path of ``cfg`` made absolute against the submitter's working directory.

    Ray workers run in their own working directory (a per-run folder, or another node), so a
    relative ``data.root=data/ml-100k`` would name a different place there. URIs (``s3://``,
    ``file://``) and ``train.warm_start=latest`` are left as they are.
    """
    data = replace(cfg.data, root=_absolute(cfg.data.root), prepared=_absolute(cfg.data.prepared))
    warm_start = cfg.train.warm_start
    train = replace(
        cfg.train,
        storage_path=_absolute(cfg.train.storage_path),
        warm_start=warm_start if warm_start == "latest" else _absolute(warm_start),
    )
    output = replace(cfg.output, output_dir=_absolute(cfg.output.output_dir))
    prepare = replace(cfg.prepare, work_dir=_absolute(cfg.prepare.work_dir))
    return replace(cfg, data=data, train=train, output=output, prepare=prepare)


def check_output_dataset(cfg: Config, meta: DatasetMeta) -> None:
    """Refuse to publish one dataset's model over another dataset's (``output.republish``
    consents). A new version of the same dataset (tonight's data) is what a model location is
    for; a different dataset there would silently replace the model its readers expect."""
    if cfg.output.republish:
        return
    publisher = Publisher(cfg.output.output_dir, cfg.data.s3_endpoint_url)
    manifest = publisher.read_manifest()
    if manifest is None:
        return
    try:
        published = publisher.read_published_json("summary.json").get("dataset") or {}
    except PublishError:  # a manifest without a summary: nothing to compare against
        return
    name = published.get("name")
    if name and name != meta.name:
        raise ConfigError(
            f"{cfg.output.output_dir} holds the published model of dataset {name!r} (run "
            f"{manifest.get('run_id')}); this run trains dataset {meta.name!r} and would replace it. "
            "Choose another --output-dir, or set output.republish=true to replace that model"
        )


def check_warm_start(cfg: Config) -> None:
    """An explicit warm-start source must hold a published model (``latest`` may be empty:
    the first night of a deployment trains from scratch)."""
    source = cfg.train.warm_start
    if not source or source == "latest" or cfg.train.resume:
        return
    manifest = Publisher(source, cfg.data.s3_endpoint_url).read_manifest()
    if manifest is None:
        raise ConfigError(f"--warm-start {source}: nothing published there (no MANIFEST.json)")


#: Errors a restart cannot fix: the data or the configuration is wrong on every attempt.
USER_ERRORS = (DatasetError, ConfigError)


def user_error_in(error: BaseException) -> DatasetError | ConfigError | None:
    """The data or configuration error behind a Ray Train failure, if that is what stopped a
    worker (found through causes, Ray's per-worker failures and its traceback wrappers)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, USER_ERRORS):
            return current
        pending.extend([current.__cause__, current.__context__, getattr(current, "_base_exc", None)])
        pending.extend(getattr(current, "worker_failures", {}).values())
        text = str(current)
        for kind in USER_ERRORS:
            marker = f"{kind.__name__}:"
            lines = [line for line in text.splitlines() if marker in line]
            if lines:
                return kind(lines[-1].split(marker, 1)[1].strip())
    return None
