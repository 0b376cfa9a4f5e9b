"""Object-storage faults: transient ones are retried (botocore per request, ours per operation)
and logged, permanent ones fail at once with a precise error, a network failure is never
called a corrupt shard, and a partitioned run whose endpoint is cut mid-fetch ends exactly
as an uncut one. Classification is by exception type, with the real botocore/aiohttp/s3fs
types; the S3 tests run against moto and SeaweedFS (which checks signatures)."""
from __future__ import annotations

import errno
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch

from sea_dist.config import Config
from sea_dist.config import apply_overrides
from sea_dist.storage.errors import DatasetError
from sea_dist.data.meta import load_meta
from sea_dist.storage.fs import make_filesystem
from sea_dist.data.feature_store import FeatureStore
from sea_dist.ops.outputs import RunOutputs
from sea_dist.storage.retry import (
    PERMANENT,
    TRANSIENT,
    RetryPolicy,
    StorageSettings,
    configure_storage,
    storage_fault,
    with_retries,
)
from tests.s3_faults import FaultyEndpoint, request_cut
from tests.seaweedfs import s3_store, seaweedfs  # noqa: F401 - fixtures
from tests.unit.test_feature_store import DIM, ITEM_IDS, _write

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def quick_storage():
    """Few botocore attempts and short backoffs, so that an outage of a few connections is
    seen by our layer within seconds (production: 5 attempts, backoff up to 10 s)."""
    previous = configure_storage(
        StorageSettings(
            s3_max_attempts=2, s3_connect_timeout_s=2.0, s3_read_timeout_s=10.0,
            policy=RetryPolicy(attempts=8, base_delay_s=0.05, max_delay_s=0.2),
        )
    )
    yield
    configure_storage(previous)


# ---------------------------------------------------------------------------------------------
# classification, by type


def _client_error(code: str, status: int, operation: str = "GetObject"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _transient_errors():
    import aiohttp
    import botocore.exceptions as bce

    url = "http://127.0.0.1:9/bucket/key"
    return [
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        TimeoutError("timed out"),
        OSError(errno.ETIMEDOUT, "timed out"),
        OSError(errno.ENETUNREACH, "network unreachable"),
        bce.EndpointConnectionError(endpoint_url=url),
        bce.ConnectTimeoutError(endpoint_url=url),
        bce.ReadTimeoutError(endpoint_url=url),
        bce.ConnectionClosedError(endpoint_url=url),
        bce.ResponseStreamingError(error="connection broken"),
        _client_error("SlowDown", 503),
        _client_error("Throttling", 400),
        _client_error("InternalError", 500),
        _client_error("ServiceUnavailable", 503),
        _client_error("RequestTimeout", 400),
        _client_error("502", 502, "HeadObject"),  # a HEAD's error has no body: the status tells
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    ]


def _permanent_errors():
    import botocore.exceptions as bce

    return [
        FileNotFoundError(errno.ENOENT, "s3://bucket/missing"),
        PermissionError(errno.EACCES, "denied"),
        _client_error("NoSuchKey", 404),
        _client_error("NoSuchBucket", 404, "ListObjectsV2"),
        _client_error("AccessDenied", 403),
        _client_error("InvalidAccessKeyId", 403),
        _client_error("SignatureDoesNotMatch", 403),
        _client_error("404", 404, "HeadObject"),
        bce.NoCredentialsError(),
        bce.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    ]


@pytest.mark.parametrize("index", range(len(_transient_errors())))
def test_transient_storage_faults_by_type(index):
    error = _transient_errors()[index]
    assert storage_fault(error) == TRANSIENT, repr(error)


@pytest.mark.parametrize("index", range(len(_permanent_errors())))
def test_permanent_storage_faults_by_type(index):
    error = _permanent_errors()[index]
    assert storage_fault(error) == PERMANENT, repr(error)


@pytest.mark.parametrize(
    "error",
    [
        OSError("503 Service Unavailable: connection reset by peer, SlowDown"),  # words, no type
        ValueError("connection timed out"),
        RuntimeError("endpoint 500"),
        DatasetError("s3://b/part-0.parquet: connection reset by peer"),
        pa.ArrowInvalid("Parquet magic bytes not found in footer"),
        OSError("Couldn't deserialize thrift: TProtocolException: Invalid data"),
    ],
)
def test_message_text_never_makes_a_storage_fault(error):
    calls = []

    def fails():
        calls.append(1)
        raise error

    assert storage_fault(error) is None
    with pytest.raises(type(error)):
        with_retries(fails, "x", FAST, sleep=lambda s: None)
    assert calls == [1]


def test_s3fs_translations_are_classified_by_their_cause():
    """s3fs raises OSError/PermissionError/FileNotFoundError *from* botocore's ClientError."""
    from s3fs.errors import translate_boto_error

    slow = translate_boto_error(_client_error("SlowDown", 503))
    assert type(slow) is OSError and storage_fault(slow) == TRANSIENT
    internal = translate_boto_error(_client_error("InternalError", 500))
    assert storage_fault(internal) == TRANSIENT
    denied = translate_boto_error(_client_error("AccessDenied", 403))
    assert isinstance(denied, PermissionError) and storage_fault(denied) == PERMANENT
    missing = translate_boto_error(_client_error("NoSuchKey", 404))
    assert isinstance(missing, FileNotFoundError) and storage_fault(missing) == PERMANENT
    odd = translate_boto_error(_client_error("InvalidArgument", 400))
    assert type(odd) is OSError and storage_fault(odd) == PERMANENT


# ---------------------------------------------------------------------------------------------
# the retry layer


def test_transient_failures_are_retried_and_logged(caplog):
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="sea_dist.storage.retry"):
        assert with_retries(flaky, "reading s3://b/k", FAST, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 <= s <= FAST.max_delay_s for s in sleeps)
    assert sum("retry" in r.message and "s3://b/k" in r.message for r in caplog.records) == 2


def test_retries_are_bounded_and_the_error_names_the_operation():
    calls, reopened = [], []

    def always_down():
        calls.append(1)
        raise ConnectionRefusedError("could not connect")

    with pytest.raises(ConnectionRefusedError) as info:
        with_retries(always_down, "reading s3://b/k", FAST, sleep=lambda s: None, on_retry=reopened.append)
    assert len(calls) == FAST.attempts and len(reopened) == FAST.attempts - 1
    assert info.value.__notes__ == ["while reading s3://b/k"]


def test_permanent_failures_fail_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("AccessDenied on s3://bucket/key")

    with pytest.raises(PermissionError, match="AccessDenied") as info:
        with_retries(denied, "writing s3://bucket/key", FAST, sleep=lambda s: None)
    assert len(calls) == 1 and info.value.__notes__ == ["while writing s3://bucket/key"]


def test_nested_retries_do_not_multiply():
    """An outer layer does not retry what an inner layer already gave up on."""
    calls = []

    def down():
        calls.append(1)
        raise ConnectionResetError("reset")

    def outer_operation():
        return with_retries(down, "reading a row group", FAST, sleep=lambda s: None)

    with pytest.raises(ConnectionResetError) as info:
        with_retries(outer_operation, "loading the dataset", FAST, sleep=lambda s: None)
    assert len(calls) == FAST.attempts  # not attempts ** 2
    assert info.value.__notes__ == ["while reading a row group"]


def test_the_s3_client_gets_the_configured_retry_mode_and_timeouts():
    previous = configure_storage(StorageSettings(s3_max_attempts=3, s3_retry_mode="adaptive",
                                                 s3_connect_timeout_s=1.5, s3_read_timeout_s=7.0))
    try:
        fs, _ = make_filesystem("s3://bucket/x", "http://127.0.0.1:9")
        fs.connect()  # builds the botocore client; sends nothing
        config = fs.s3.meta.config
        assert config.retries == {"total_max_attempts": 3, "mode": "adaptive"}  # 3 in all, not 3 retries
        assert (config.connect_timeout, config.read_timeout) == (1.5, 7.0)
    finally:
        configure_storage(previous)
    with pytest.raises(ValueError, match="s3_retry_mode"):
        StorageSettings(s3_retry_mode="eager")


def test_storage_settings_come_from_the_data_config():
    cfg = apply_overrides(Config(), {"data.s3_max_attempts": "7", "data.s3_retry_mode": "adaptive",
                                     "data.storage_retries": "3", "data.storage_retry_max_delay_s": "2.5"})
    settings = StorageSettings.from_config(cfg.data)
    assert (settings.s3_max_attempts, settings.s3_retry_mode) == (7, "adaptive")
    assert settings.policy == RetryPolicy(attempts=3, base_delay_s=0.5, max_delay_s=2.5)
    assert StorageSettings.from_config(Config().data) == StorageSettings()  # one set of defaults


def test_the_config_fingerprint_ignores_storage_settings():
    from sea_dist.config import config_to_dict
    from sea_dist.ops.publish import config_fingerprint

    base = config_fingerprint(config_to_dict(Config()))
    tuned = apply_overrides(Config(), {"data.s3_max_attempts": "9", "data.storage_retries": "2"})
    assert config_fingerprint(config_to_dict(tuned)) == base
    other = apply_overrides(Config(), {"data.root": "s3://elsewhere/data"})
    assert config_fingerprint(config_to_dict(other)) != base


def test_a_filesystem_that_fails_its_first_calls(tmp_path, monkeypatch):
    outputs = RunOutputs(str(tmp_path / "out"))
    real_open, failures = outputs.fs.open, {"left": 2}

    def failing_open(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("connection reset by peer")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(outputs.fs, "open", failing_open)
    previous = configure_storage(StorageSettings(policy=FAST))
    try:
        outputs.write_text("summary.json", "{}")
    finally:
        configure_storage(previous)
    assert (tmp_path / "out" / "summary.json").read_text() == "{}" and failures["left"] == 0


# ---------------------------------------------------------------------------------------------
# against real S3 endpoints (moto, SeaweedFS), through a fault-injecting proxy


def test_a_missing_bucket_or_key_fails_fast(s3_store):
    endpoint = FaultyEndpoint(s3_store.url)
    try:
        calls = []

        def read(path):
            def op():
                calls.append(path)
                fs, bare = make_filesystem(f"s3://{path}", endpoint.url)
                return fs.cat_file(bare)

            return op

        with pytest.raises(FileNotFoundError) as info:
            with_retries(read("no-such-bucket-sea/catalog/dataset.json"), "reading the catalog")
        assert info.value.__notes__ == ["while reading the catalog"]
        with pytest.raises(FileNotFoundError):
            with_retries(read(f"{s3_store.bucket}/no/such/key.json"), "reading a key")
        assert len(calls) == 2  # one attempt each
        # and no request sent twice (botocore did not retry them either)
        assert len(endpoint.requests) == len(set(endpoint.requests)) > 0 and endpoint.resets == 0
        with pytest.raises(DatasetError, match="no-such-bucket-sea/catalog: dataset root does not exist"):
            load_meta("s3://no-such-bucket-sea/catalog", endpoint.url)
    finally:
        endpoint.close()


def test_wrong_credentials_fail_fast(s3_store, monkeypatch):
    if not s3_store.checks_signatures:
        pytest.skip("moto accepts any credentials and signature")
    endpoint = FaultyEndpoint(s3_store.url)
    try:
        fs, bare = make_filesystem(f"s3://{s3_store.bucket}/x", endpoint.url)
        fs.pipe_file(f"{bare}/creds.txt", b"signed")
        for key, secret in ((s3_store.access_key, "not-the-secret"), ("AKNOSUCHKEY0000", s3_store.secret_key)):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            before = len(endpoint.requests)
            type(fs).clear_instance_cache()  # fsspec would hand back the client with the old ones
            wrong, _ = make_filesystem(f"s3://{s3_store.bucket}/x", endpoint.url)
            with pytest.raises(PermissionError):
                with_retries(lambda: wrong.cat_file(f"{bare}/creds.txt"), "reading with wrong credentials")
            sent = endpoint.requests[before:]
            assert len(sent) == len(set(sent)) > 0  # refused at once: no request sent twice
            # a root at the top of the bucket: denied, not "does not exist" (s3fs says a bucket
            # it may not read does not exist; dataset.json is asked for first)
            with pytest.raises(PermissionError):
                load_meta(f"s3://{s3_store.bucket}", endpoint.url)
    finally:
        endpoint.close()


def test_an_endpoint_outage_is_ridden_out(s3_store, quick_storage, caplog):
    from sea_dist.data.writer import write_dataset
    from sea_dist.sources.synthetic import SyntheticSpec, generate

    root = f"s3://{s3_store.bucket}/outage"
    spec = SyntheticSpec(n_users=30, n_items=40, n_interactions=300, modalities={"a": 4}, name="outage")
    write_dataset(root, *generate(spec), s3_endpoint_url=s3_store.url)
    endpoint = FaultyEndpoint(s3_store.url)
    try:
        assert load_meta(root, endpoint.url).name == "outage"
        endpoint.outage(connections=12)  # more than botocore's 2 attempts per request
        with caplog.at_level(logging.WARNING, logger="sea_dist.storage.retry"):
            meta = load_meta(root, endpoint.url)
        assert meta.name == "outage" and endpoint.resets == 12 and endpoint.back_up.is_set()
        assert any("transient storage error" in r.message and "dataset.json" in r.message for r in caplog.records)
    finally:
        endpoint.close()


@pytest.fixture
def s3_features(s3_store):
    root = f"s3://{s3_store.bucket}/faults-fs"
    return root, _write(root, s3_endpoint_url=s3_store.url)


def test_a_fetch_cut_mid_body_returns_the_same_rows(s3_store, s3_features, quick_storage):
    root, feats = s3_features
    endpoint = FaultyEndpoint(s3_store.url)
    try:
        store = FeatureStore(root, "img", dim=DIM, s3_endpoint_url=endpoint.url)
        assert store.stats.bytes_read == 0  # footers only so far
        endpoint.arm_cut("/faults-fs/features/img/", then_reset=10)
        idx = np.arange(0, 40)
        got = store.fetch(ITEM_IDS[idx])
        assert endpoint.cut_done.is_set() and len(endpoint.cuts) == 1 and endpoint.resets == 10
        np.testing.assert_array_equal(got, feats["img"][idx])
        assert store.stats.retries >= 1  # our layer reopened the shard and read it again
        assert store.stats.row_groups_read == 3  # each row group counted once, retries or not
    finally:
        endpoint.close()


def test_an_unreachable_store_is_a_storage_error_not_a_corrupt_shard(s3_store, s3_features, quick_storage):
    root, _ = s3_features
    endpoint = FaultyEndpoint(s3_store.url)
    try:
        configure_storage(StorageSettings(s3_max_attempts=1, policy=RetryPolicy(attempts=3, base_delay_s=0.01)))
        store = FeatureStore(root, "img", dim=DIM, s3_endpoint_url=endpoint.url)
        endpoint.outage(connections=10**9)  # gone for good
        with pytest.raises(Exception) as info:
            store.fetch(ITEM_IDS[:5])
        assert not isinstance(info.value, DatasetError) and "corrupt" not in str(info.value)
        assert storage_fault(info.value) == TRANSIENT
        assert info.value.__notes__ == [f"while reading {root}/features/img/part-00000.parquet row group 0"]
        assert store.stats.retries == 2  # 3 attempts in all, then it gave up
    finally:
        endpoint.close()


def test_a_corrupt_shard_is_still_reported_as_corrupt(s3_store):
    root = f"s3://{s3_store.bucket}/corrupt"
    fs, bare = make_filesystem(root, s3_store.url)
    fs.pipe_file(f"{bare}/features/img/part-00000.parquet", b"PAR1 this is not a parquet file at all PAR1")
    with pytest.raises(DatasetError, match="part-00000.parquet: corrupted or unreadable Parquet shard"):
        FeatureStore(root, "img", dim=DIM, s3_endpoint_url=s3_store.url)


def test_a_multipart_upload_reads_back_whole_and_by_range(s3_store, monkeypatch):
    """Catalog-size embedding files go up in parts (above s3fs' 50 MiB block): the same code
    path with 5 MiB parts (S3's smallest), read back whole and across a part boundary."""
    import pyarrow.parquet as pq

    outputs = RunOutputs(f"s3://{s3_store.bucket}/multipart", s3_store.url)
    monkeypatch.setattr(outputs.fs, "default_block_size", 5 * 2**20)
    rows = torch.from_numpy(np.random.default_rng(0).standard_normal((25_000, 128)).astype(np.float32))
    ids = np.arange(25_000, dtype=np.int64) * 7
    (path,) = outputs.write_embeddings("users", ids, rows)
    info = outputs.fs.info(path)
    assert info["size"] > 12 * 2**20 and int(info["ETag"].strip('"').rsplit("-", 1)[1]) >= 2  # parts
    back = pq.read_table(outputs.fs.open(path, "rb"))
    assert np.array_equal(back.column("user_id").to_numpy(), ids)
    flat = back.column("embedding").combine_chunks().flatten().to_numpy()
    assert np.array_equal(flat.reshape(-1, 128), rows.numpy())
    whole = outputs.fs.cat_file(path)
    boundary = 5 * 2**20
    assert outputs.fs.cat_file(path, start=boundary - 100, end=boundary + 100) == whole[boundary - 100 : boundary + 100]


# ---------------------------------------------------------------------------------------------
# a partitioned training run whose endpoint is cut during a step


def _train_through(rank: int, world: int, cfg_dict: dict, cut_url: str) -> dict:
    import torch
    import torch.distributed as dist

    from sea_dist.runtime.distributed import WorkerContext
    from sea_dist.train.loop import Trainer

    torch.set_num_threads(1)
    cfg = apply_overrides(Config(), cfg_dict)
    configure_storage(cfg.data)
    trainer = Trainer(cfg, WorkerContext.from_process_group())
    assert all(s.stats.row_groups_read == 0 for s in trainer.source.stores.values())  # nothing fetched yet
    if cut_url and rank == 0:
        # the next feature GET, which is the first step's row group read of one of the ranks
        request_cut(cut_url, "/features/", then_reset=12)
    dist.barrier()
    trainer.fit()
    return {
        "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "tables": trainer.tables.gather_full(),
        # what the run computed (an epoch record also holds its timings, which differ)
        "history": [{k: r[k] for k in ("epoch", "loss", "valid", "test", "best_epoch", "steps")}
                    for r in trainer.progress.history],
        "retries": sum(s.stats.retries for s in trainer.source.stores.values()),
        "row_groups_read": sum(s.stats.row_groups_read for s in trainer.source.stores.values()),
    }


@pytest.mark.timeout(600)
def test_an_endpoint_cut_mid_fetch_in_a_partitioned_step_changes_nothing(moto_s3, tmp_path):
    from sea_dist.sources.synthetic import SyntheticSpec, write_synthetic
    from sea_dist.prepare.job import run_prepare
    from tests.dist_utils import run_distributed
    from tests.unit.test_partitioned_training import _config, _flat

    root = "s3://sea-dist-test/cut-run"
    spec = SyntheticSpec(n_users=200, n_items=90, n_interactions=2500, modalities={"image": 8, "text": 4})
    write_synthetic(spec, root, s3_endpoint_url=moto_s3, row_group_size=16)  # several row groups
    cfg = _config(root, "", "sharded")
    cfg.data.s3_endpoint_url = moto_s3
    prepared = run_prepare(cfg)
    endpoint = FaultyEndpoint(moto_s3)
    runs = {}
    try:
        for name in ("uncut", "cut"):
            cfg = _config(root, str(tmp_path / name), "sharded", prepared.uri)
            overrides = {"data.s3_endpoint_url": endpoint.url, "data.s3_max_attempts": 2,
                         "data.storage_retries": 8, "data.storage_retry_max_delay_s": 0.2,
                         "train.epochs": 1, "train.max_steps_per_epoch": 3, "train.run_name": name}
            cfg = apply_overrides(cfg, overrides)
            runs[name] = run_distributed(_train_through, 2, _flat(cfg), endpoint.url if name == "cut" else "")
    finally:
        endpoint.close()
    uncut, cut = runs["uncut"], runs["cut"]
    assert len(endpoint.cuts) == 1 and "/cut-run/features/" in endpoint.cuts[0] and endpoint.resets == 12
    assert sum(r["retries"] for r in cut) >= 1 and sum(r["retries"] for r in uncut) == 0
    assert [r["row_groups_read"] for r in cut] == [r["row_groups_read"] for r in uncut]
    for name, value in uncut[0]["tables"].items():
        assert torch.equal(cut[0]["tables"][name], value), name
    for rank in range(2):
        for name, value in uncut[rank]["model"].items():
            assert torch.equal(cut[rank]["model"][name], value), name
        assert cut[rank]["history"] == uncut[rank]["history"]
