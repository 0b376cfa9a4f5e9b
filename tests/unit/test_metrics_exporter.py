"""The Prometheus exporter: series, labels, counters, and the Pushgateway push."""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from sea_dist.ops.metrics import MetricsIdentity, TrainingMetrics, driver_port, worker_port
from tests.conftest import _free_port


def _scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("sea_dist") or s.name.startswith("process_")}, text


def test_series_and_labels_over_http():
    metrics = TrainingMetrics(MetricsIdentity("run-1", "0", "v7"))
    port = _free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        metrics.record_step(edges=100, sampling_s=0.5, fetch_s=0.25, fetch_bytes=4096)
        metrics.record_step(edges=50, sampling_s=0.5, fetch_s=0.25, fetch_bytes=4096)
        metrics.record_epoch(3, {"total": 0.9, "bpr": 0.8, "club": 0.0, "align": 0.1},
                             {"valid": {"recall@20": 0.2}}, 1234.0)
        metrics.record_checkpoint(2048)
        samples, text = _scrape(port)
    finally:
        server.shutdown()
    assert samples["sea_dist_train_edges_total"].value == 150
    assert samples["sea_dist_batches_total"].value == 2
    assert samples["sea_dist_feature_fetch_bytes_total"].value == 8192
    assert samples["sea_dist_last_checkpoint_bytes"].value == 2048
    assert samples["sea_dist_train_edges_total"].labels == {"run_id": "run-1", "rank": "0", "dataset_version": "v7"}
    assert 'sea_dist_loss{dataset_version="v7",rank="0",run_id="run-1",term="bpr"} 0.8' in text
    assert 'metric="recall@20"' in text and "process_resident_memory_bytes" in text


def test_port_scheme_never_collides():
    base = 9400
    ports = {driver_port(base)} | {worker_port(base, r) for r in range(8)}
    assert len(ports) == 9 and driver_port(base) == 9399 and worker_port(base, 3) == 9403
