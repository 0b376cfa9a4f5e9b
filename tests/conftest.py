"""Shared pytest fixtures.

``moto_s3``: a real HTTP S3 endpoint (moto's server) on 127.0.0.1, so code paths that talk to
S3 through s3fs/botocore (signing, multipart writes, listings) are exercised without a network.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

#: bucket created by the ``moto_s3`` fixture (tests may create more).
MOTO_BUCKET = "sea-dist-test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1 with bucket ``sea-dist-test``.

    Credentials are dummy values set in the environment for the module's duration; the region
    goes in ``AWS_DEFAULT_REGION`` (not s3fs ``client_kwargs``), otherwise bucket creation fails
    with InvalidLocationConstraint. The server is killed (by its own pid) at teardown.
    """
    import s3fs

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1).close()
                    break
                except urllib.error.HTTPError:
                    break  # the server answered, even if with an error status
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"moto server exited with code {proc.returncode}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"moto server did not come up on {url} within 30 s")
                    time.sleep(0.1)
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}, skip_instance_cache=True)
            fs.mkdir(MOTO_BUCKET)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
