"""Object-storage faults: transient ones are retried with bounded backoff and logged,
permanent ones fail fast with a precise error."""
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from sea_dist.data.dataset import DatasetError, load_meta
from sea_dist.ops.outputs import RunOutputs
from sea_dist.ops.retry import RetryPolicy, is_transient, with_retries
from tests.conftest import _free_port

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.mark.parametrize(
    "error,transient",
    [
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError("503 Service Unavailable"), True),
        (OSError("SlowDown: please reduce your request rate"), True),
        (FileNotFoundError("s3://nope/x"), False),
        (PermissionError("AccessDenied"), False),
        (OSError("NoSuchBucket: the bucket does not exist"), False),
        (ValueError("bad data"), False),
        (DatasetError("x: bad"), False),
    ],
)
def test_classification(error, transient):
    assert is_transient(error) is transient


def test_transient_failures_are_retried_and_logged(caplog):
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="sea_dist.ops.retry"):
        assert with_retries(flaky, "reading s3://b/k", FAST, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 <= s <= FAST.max_delay_s for s in sleeps)
    assert sum("retry" in r.message and "s3://b/k" in r.message for r in caplog.records) == 2


def test_retries_are_bounded():
    calls = []

    def always_down():
        calls.append(1)
        raise ConnectionRefusedError("could not connect")

    with pytest.raises(ConnectionRefusedError):
        with_retries(always_down, "x", FAST, sleep=lambda s: None)
    assert len(calls) == FAST.attempts


def test_permanent_failures_fail_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("AccessDenied on s3://bucket/key")

    with pytest.raises(PermissionError, match="AccessDenied"):
        with_retries(denied, "x", FAST, sleep=lambda s: None)
    assert len(calls) == 1


def test_a_filesystem_that_fails_its_first_calls(tmp_path, monkeypatch):
    outputs = RunOutputs(str(tmp_path / "out"))
    real_open, failures = outputs.fs.open, {"left": 2}

    def failing_open(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("connection reset by peer")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(outputs.fs, "open", failing_open)
    monkeypatch.setattr("sea_dist.ops.retry.DEFAULT_POLICY", FAST)
    monkeypatch.setattr("sea_dist.ops.retry.time.sleep", lambda s: None)
    import sea_dist.ops.outputs as outputs_module
    monkeypatch.setattr(outputs_module, "with_retries", lambda op, what: with_retries(op, what, FAST, sleep=lambda s: None))
    outputs.write_text("summary.json", "{}")
    assert (tmp_path / "out" / "summary.json").read_text() == "{}" and failures["left"] == 0


def test_missing_bucket_fails_fast_with_the_path(moto_s3):
    started = time.monotonic()
    with pytest.raises((DatasetError, FileNotFoundError)) as info:
        with_retries(lambda: load_meta("s3://no-such-bucket/catalog", moto_s3), "reading", FAST)
    assert "no-such-bucket" in str(info.value) and time.monotonic() - started < 10


class _Outage:
    """A TCP forwarder in front of the S3 server: closing it makes the endpoint refuse
    connections (an outage or a restarting endpoint), reopening it brings the store back
    with its data, as a real restarted store would have."""

    def __init__(self, port: int, target: int):
        self.port, self.target, self.server = port, target, None
        self.connections = []

    def up(self):
        import socket

        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(64)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def down(self):
        self.server.close()
        for sock in self.connections:  # established (keep-alive) connections die too
            try:
                sock.close()
            except OSError:
                pass
        self.connections.clear()

    def _accept(self, server):
        import socket

        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass


def test_an_s3_endpoint_that_goes_away_mid_run_is_ridden_out(moto_s3, tmp_path, caplog, monkeypatch):
    # botocore retries connection errors on its own for ~8 s by default; with one attempt
    # per call the outage below is seen by our retry layer, which is what this test is about
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    from sea_dist.data.dataset import write_dataset
    from sea_dist.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(n_users=30, n_items=40, n_interactions=300, modalities={"a": 4}, name="outage")
    write_dataset("s3://sea-dist-test/outage", *generate(spec), s3_endpoint_url=moto_s3)
    outage = _Outage(_free_port(), int(moto_s3.rsplit(":", 1)[1]))
    url = f"http://127.0.0.1:{outage.port}"
    outage.up()
    assert load_meta("s3://sea-dist-test/outage", url).name == "outage"
    outage.down()

    def back_later():
        time.sleep(2.0)
        outage.up()

    thread = threading.Thread(target=back_later)
    thread.start()
    policy = RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=2.0)
    with caplog.at_level(logging.WARNING, logger="sea_dist.ops.retry"):
        meta = with_retries(lambda: load_meta("s3://sea-dist-test/outage", url), "reading outage", policy)
    thread.join()
    outage.down()
    assert meta.name == "outage"
    assert any("transient storage error" in r.message for r in caplog.records)
