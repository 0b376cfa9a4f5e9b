"""No credentials in outputs or metrics; least privilege is tested with the k8s manifests."""
import os
import urllib.request

from sea_dist.ops.metrics import MetricsIdentity, TrainingMetrics
from sea_dist.ops.redact import redact_config, redact_uri
from tests.conftest import _free_port


def test_uri_user_info_is_redacted():
    assert redact_uri("s3://AKIAXYZ:s3cr3t@bucket/data") == "s3://***@bucket/data"
    assert redact_uri("s3://bucket/data") == "s3://bucket/data"
    assert redact_uri("/local/path@2") == "/local/path@2"
    cfg = {"data": {"root": "s3://k:secret@b/x", "s3_endpoint_url": "http://u:p@127.0.0.1:9000"}, "train": {"lr": 1e-4}}
    assert "secret" not in str(redact_config(cfg)) and ":p@" not in str(redact_config(cfg))
    assert redact_config(cfg)["train"] == {"lr": 1e-4}


def test_metrics_endpoint_exposes_no_environment(monkeypatch):
    canary = "sea-dist-canary-metrics-91c2"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    metrics = TrainingMetrics(MetricsIdentity("run", "0", "v1"))
    metrics.record_step(10, 0.1, 0.1, 100)
    port = _free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert canary not in text and "sea_dist_batches_total" in text
