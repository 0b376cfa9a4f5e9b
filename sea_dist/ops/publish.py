"""Atomic publishing of a trained model: readers never see a half-written one.

Layout under ``--output-dir`` (local or ``s3://``)::

    MANIFEST.json                 <- the only entry point for readers; written last
    runs/<publish_id>/summary.json    <- one publish attempt's artifacts, complete before
    runs/<publish_id>/report.html        the manifest names them (publish_id = run id + time)
    runs/<publish_id>/embeddings/{users,items}/part-*.parquet
    metrics.jsonl, run.json       <- live progress of the current run (not part of a model)

A run writes everything under its own ``runs/<publish_id>/`` prefix, then replaces
``MANIFEST.json`` in one write (one object PUT on S3; write-then-rename locally). A crash at
any point before that leaves the previous manifest, hence the previous model, in place;
the orphaned prefix is removed by the next successful publish. The manifest lists every
file with its size, so a reader can verify it has the whole model.

Every read, listing and write is retried on transient storage faults
(:func:`sea_dist.storage.retry.with_retries`); run prefixes are found from the files under
``runs/``, not from a delimiter listing, because some stores (SeaweedFS) keep listing a
prefix as a folder after its last object is deleted.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import time

from fsspec.implementations.local import LocalFileSystem

from sea_dist.storage.fs import make_filesystem
from sea_dist.storage.retry import with_retries

MANIFEST = "MANIFEST.json"
RUNS = "runs"
#: ``data`` keys that say how to reach storage, not what the model is
_STORAGE_KEYS = (
    "s3_max_attempts", "s3_retry_mode", "s3_connect_timeout_s", "s3_read_timeout_s",
    "storage_retries", "storage_retry_max_delay_s",
)


class PublishError(RuntimeError):
    pass


def config_fingerprint(config: dict) -> str:
    """Hash of the settings that define the model (not where it is written or how it is named),
    so a cron rerun for the same data and config is recognised as already published."""
    relevant = {k: v for k, v in config.items() if k not in ("output", "metrics")}
    train = dict(relevant.get("train", {}))
    for key in ("resume", "run_name", "storage_path", "max_failures"):
        train.pop(key, None)
    relevant["train"] = train
    if "data" in relevant:
        relevant["data"] = {k: v for k, v in relevant["data"].items() if k not in _STORAGE_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


class Publisher:
    def __init__(self, output_dir: str, s3_endpoint_url: str = ""):
        self.uri = output_dir
        self.fs, self.root = make_filesystem(output_dir, s3_endpoint_url)

    @staticmethod
    def new_publish_id(run_id: str) -> str:
        """A fresh staging name per publish attempt: a resumed run (same run id) never writes
        into the prefix that the current manifest points at."""
        return f"{run_id}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 1_000_000:06d}"

    def run_prefix(self, publish_id: str) -> str:
        """Where a publish attempt stages its artifacts (a URI usable by :class:`RunOutputs`)."""
        return posixpath.join(self.uri.rstrip("/"), RUNS, publish_id)

    def read_manifest(self) -> dict | None:
        path = posixpath.join(self.root, MANIFEST)

        def read() -> dict | None:
            if not self.fs.exists(path):
                return None
            with self.fs.open(path) as f:
                return json.load(f)

        return with_retries(read, f"reading {path}")

    def publish(
        self, run_id: str, publish_id: str, dataset_version: str, fingerprint: str, keep_runs: int = 2
    ) -> dict:
        """Name ``runs/<publish_id>/`` in MANIFEST.json (after checking it is complete)."""
        prefix = posixpath.join(self.root, RUNS, publish_id)
        listing = with_retries(lambda: self.fs.find(prefix, detail=True), f"listing {prefix}")
        files = {posixpath.relpath(path, prefix): int(info["size"]) for path, info in listing.items()}
        if "summary.json" not in files:
            raise PublishError(f"refusing to publish {prefix}: it has no summary.json")
        manifest = {
            "run_id": run_id,
            "prefix": posixpath.join(RUNS, publish_id),
            "dataset_version": dataset_version,
            "config_fingerprint": fingerprint,
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        manifest_path = posixpath.join(self.root, MANIFEST)
        text = json.dumps(manifest, indent=2) + "\n"
        with_retries(lambda: self._write_atomically(manifest_path, text), f"writing {manifest_path}")
        self._remove_old_runs(publish_id, keep_runs)
        return manifest

    def _write_atomically(self, path: str, text: str) -> None:
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{path}.tmp-{time.time_ns()}"
            with self.fs.open(tmp, "w") as f:
                f.write(text)
            self.fs.mv(tmp, path)  # a rename: atomic on one filesystem
        else:
            with self.fs.open(path, "w") as f:  # one PUT: object stores never show half of it
                f.write(text)

    def _remove_old_runs(self, current: str, keep: int) -> None:
        """Drop run prefixes beyond the newest ``keep`` (the published one always stays), and
        empty ones (a crashed attempt's folder locally).

        Runs are counted from the files under ``runs/``: an emptied prefix that the store
        still lists as a folder (SeaweedFS) must not take a kept run's place."""
        runs_dir = posixpath.join(self.root, RUNS)

        def listing() -> tuple[set[str], set[str]]:
            if not self.fs.exists(runs_dir):
                return set(), set()
            listed = {posixpath.basename(e.rstrip("/")) for e in self.fs.ls(runs_dir, detail=False)}
            with_files = {posixpath.relpath(p, runs_dir).split("/", 1)[0] for p in self.fs.find(runs_dir)}
            return listed, with_files

        listed, with_files = with_retries(listing, f"listing {runs_dir}")
        runs = sorted(with_files - {current, ".", ""})
        doomed = sorted(listed - with_files - {current, ""}) + runs[: max(len(runs) - (keep - 1), 0)]
        for name in doomed:
            entry = posixpath.join(runs_dir, name)

            def remove(entry: str = entry) -> None:
                try:
                    self.fs.rm(entry, recursive=True)
                except FileNotFoundError:  # an empty folder that was only a listing artefact
                    pass

            with_retries(remove, f"removing {entry}")

    def published_file(self, name: str) -> str:
        """Filesystem path of ``name`` in the published model, checked against the manifest."""
        manifest = self.read_manifest()
        if manifest is None:
            raise PublishError(f"nothing published under {self.uri} (no {MANIFEST})")
        if name not in manifest["files"]:
            raise PublishError(f"{name} is not part of the published model {manifest['run_id']}")
        return posixpath.join(self.root, manifest["prefix"], name)

    def read_published_json(self, name: str) -> dict:
        path = self.published_file(name)

        def read() -> dict:
            with self.fs.open(path) as f:
                return json.load(f)

        return with_retries(read, f"reading {path}")
