"""Ray's checkpoint storage goes through our S3 client (retry mode, timeouts), on AWS too."""
from __future__ import annotations

import pyarrow.fs

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.storage.retry import configure_storage, s3_config_kwargs
from sea_dist.train.ray_run import storage_for


def test_s3_checkpoints_use_our_filesystem_with_or_without_an_endpoint():
    for endpoint in ("", "http://127.0.0.1:9"):
        cfg = apply_overrides(Config(), {"train.storage_path": "s3://bucket/ckpt", "data.s3_endpoint_url": endpoint})
        path, fs = storage_for(cfg)
        assert path == "bucket/ckpt"
        assert isinstance(fs, pyarrow.fs.PyFileSystem)


def test_local_checkpoints_need_no_filesystem(tmp_path):
    cfg = apply_overrides(Config(), {"train.storage_path": str(tmp_path)})
    assert storage_for(cfg) == (str(tmp_path), None)


def test_the_data_section_sets_the_retry_mode():
    previous = configure_storage(apply_overrides(Config(), {"data.s3_retry_mode": "adaptive"}).data)
    try:
        assert s3_config_kwargs()["retries"]["mode"] == "adaptive"
    finally:
        configure_storage(previous)
