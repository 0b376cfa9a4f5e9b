"""A real training run scraped over HTTP, by us and by a real Prometheus server, with a
Pushgateway receiving the final figures."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO, published_path

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
REQUIRED = [
    "sea_dist_loss", "sea_dist_train_edges_total", "sea_dist_train_edges_per_second", "sea_dist_batches_total",
    "sea_dist_sampling_seconds_total", "sea_dist_feature_fetch_seconds_total", "sea_dist_feature_fetch_bytes_total",
    "sea_dist_feature_cache_hit_ratio", "sea_dist_eval_metric", "sea_dist_epoch", "process_resident_memory_bytes",
]
CHECKPOINT = ["sea_dist_last_checkpoint_timestamp_seconds", "sea_dist_last_checkpoint_bytes"]  # rank 0, driver
COUNTERS = ["sea_dist_train_edges_total", "sea_dist_batches_total", "sea_dist_sampling_seconds_total"]


def _port_block(width):
    """A base port with ``base-1 .. base+width-1`` all free (Ray's worker range avoided)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if 10002 <= base - 1 <= 20000 or base + width > 65535:
            continue
        ok = True
        for p in range(base - 1, base + width):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _get(url, timeout=2):
    return urllib.request.urlopen(url, timeout=timeout).read().decode()


def _scrape(port):
    samples = {}
    for family in text_string_to_metric_families(_get(f"http://127.0.0.1:{port}/metrics")):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _advanced(now, before):
    """``now`` if its batch counter is past ``before``'s, else None."""
    name = "sea_dist_batches_total"
    if name in now and now[name][0].value > before[name][0].value:
        return now
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian package prometheus not installed")
def test_training_metrics_scraped_by_prometheus(tiny_root, tmp_path):
    base = _port_block(3)
    prom_port, push_port = _port_block(1), _port_block(1)
    ray_tmp = tempfile.mkdtemp(prefix="sea_ray_", dir="/tmp")
    out = tmp_path / "run"
    procs = []
    try:
        pushgateway = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{push_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(pushgateway)
        config = tmp_path / "prometheus.yml"
        targets = [f"127.0.0.1:{p}" for p in (base - 1, base, base + 1)]
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: sea_dist\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(prometheus)
        env = dict(os.environ, SEA_DIST_RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
        env.pop("RAY_ADDRESS", None)
        # 12 epochs: long enough that the scrapes below (a few seconds once training starts)
        # happen while it trains, short enough for CI; a run over before them fails the waits
        job = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "jobs", "train.py"), "--output-dir", str(out), "--epochs", "12",
             f"data.root={tiny_root}", "train.batch_size=256", "model.club_inner_steps=20", "train.patience=50",
             f"metrics.port={base}", "metrics.host=127.0.0.1", f"metrics.pushgateway_url=127.0.0.1:{push_port}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        procs.append(job)

        # every worker's endpoint, while the run trains
        first = {p: _wait(lambda p=p: _scrape(p).get("sea_dist_epoch") and _scrape(p), 420, f"worker :{p}")
                 for p in (base, base + 1)}
        # a later scrape of each, once that worker has trained more batches (an event, not a pause)
        second = {p: _wait(lambda p=p: _advanced(_scrape(p), first[p]), 300, f"more batches on :{p}")
                  for p in (base, base + 1)}
        ranks = set()
        for port in (base, base + 1):
            for name in REQUIRED:
                assert name in second[port], f"{name} missing on :{port}"
            labels = second[port]["sea_dist_train_edges_total"][0].labels
            assert set(labels) == {"run_id", "rank", "dataset_version"} and labels["dataset_version"]
            ranks.add(labels["rank"])
            for name in COUNTERS:
                assert second[port][name][0].value >= first[port][name][0].value > 0
            terms = {s.labels["term"] for s in second[port]["sea_dist_loss"]}
            assert terms == {"total", "bpr", "club", "align"}
        assert ranks == {"0", "1"}
        for name in CHECKPOINT:
            assert name in second[base], f"{name} missing on rank 0"
        # the driver side (Ray Train controller) exports the run-level series
        driver = _wait(lambda: _scrape(base - 1).get("sea_dist_epoch") and _scrape(base - 1), 180, "driver endpoint")
        assert driver["sea_dist_epoch"][0].labels["rank"] == "driver"
        for name in CHECKPOINT + ["sea_dist_eval_metric", "sea_dist_loss"]:
            assert name in driver, f"{name} missing on the driver"

        # the real Prometheus server scraped a training metric
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": "sea_dist_train_edges_total"})
        result = _wait(lambda: json.loads(_get(api))["data"]["result"], 180, "Prometheus to ingest a scrape")
        assert {r["metric"]["rank"] for r in result} <= {"0", "1"} and float(result[0]["value"][1]) > 0

        job_out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, job_out[-3000:]
        pushed = _get(f"http://127.0.0.1:{push_port}/metrics")
        assert "sea_dist_last_success_timestamp_seconds" in pushed and "sea_dist_final_metric" in pushed
        assert os.path.exists(published_path(out, "report.html"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
