"""Object-storage faults: which ones a retry can outlive, and the retries themselves.

Object stores fail transiently all the time (connection resets, timeouts, 5xx, throttling, a
restarted endpoint). A nightly job should ride those out; but a missing key or bucket, a denied
request or bad credentials will not fix itself, and retrying only delays a clear failure.

Two layers, innermost first:

* **botocore**, per S3 request: the client that :func:`sea_dist.storage.fs.make_filesystem`
  builds gets ``retries={"total_max_attempts": data.s3_max_attempts, "mode": data.s3_retry_mode}``
  and connect/read timeouts (:func:`s3_config_kwargs`). botocore's standard mode retries
  connection errors, timeouts, 500/502/503/504 and throttling codes (SlowDown, ...) with
  exponential backoff and jitter; adaptive mode also slows the client down after throttling.
  s3fs adds its own few retries for a response body that breaks off.
* **ours**, per operation (:func:`with_retries`): a Parquet row group read by pyarrow, a whole
  manifest write, an upload. Needed where one operation is many requests (pyarrow reading a
  row group through a file object that lost its connection half way must reopen the file and
  start over) and for outages longer than botocore's few seconds of attempts. Bounded
  (``data.storage_retries`` attempts in all), with exponential backoff and full jitter, each
  retry logged at WARNING with what was being read or written.

Errors are classified by **type**, never by message text (:func:`storage_fault`): Python's
connection/timeout errors and transient errnos, botocore's connection/HTTP client errors and
:class:`~botocore.exceptions.ClientError` by its S3 error code and HTTP status, aiohttp's
connection and payload errors. s3fs turns a ``ClientError`` into ``FileNotFoundError``,
``PermissionError`` or a plain ``OSError`` with the ``ClientError`` as ``__cause__``; the cause
chain is followed, so an ``OSError`` whose cause is a 503 is transient and one whose cause is a
403 is not. An error that a retry layer already gave up on is not retried again by an outer
one (no multiplied retries). An error of no known storage kind (a Parquet decoding error, a
:class:`~sea_dist.storage.errors.DatasetError`, a bug) is not a storage fault: it is raised at
once and is the only kind that may be reported as bad data.

The settings are process-wide (like logging's): :func:`configure_storage` applies a run's
``data`` config section in each process that does I/O (driver and workers); until then the
defaults of :class:`sea_dist.config.DataConfig` apply.
"""
from __future__ import annotations

import errno
import http.client
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from sea_dist.storage.errors import DatasetError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = "transient"
PERMANENT = "permanent"

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
        errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EAGAIN,
    }
)
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# S3 status codes a retry can outlive: throttling (429, and 503 SlowDown) and server errors
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_RETRY_MODES = ("standard", "adaptive", "legacy")
_GAVE_UP = "_sea_dist_retries_exhausted"


def _botocore_codes() -> frozenset[str]:
    """The S3 error codes botocore's standard mode treats as throttling or transient."""
    try:
        from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

        return frozenset(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) | frozenset(
            TransientRetryableChecker._TRANSIENT_ERROR_CODES
        )
    except (ImportError, AttributeError):  # pragma: no cover - a botocore without them
        return frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestLimitExceeded"})


_TRANSIENT_CODES = _botocore_codes() | {"InternalError", "ServiceUnavailable"}


def _library_verdict(error: BaseException) -> str | None:
    """botocore's and aiohttp's exception types (imported lazily: both come with s3fs)."""
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover
        bce = None
    if bce is not None:
        if isinstance(error, bce.ClientError):
            response = getattr(error, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
                return TRANSIENT
            return PERMANENT  # NoSuchKey, NoSuchBucket, AccessDenied, InvalidAccessKeyId, ...
        if isinstance(error, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError)):
            return TRANSIENT  # endpoint/connect/read timeouts, closed connections, broken streams
        if isinstance(error, bce.BotoCoreError):
            return PERMANENT  # no or partial credentials, bad parameters, unknown region, ...
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        return None
    if isinstance(error, aiohttp.ClientResponseError):
        return TRANSIENT if error.status in _TRANSIENT_STATUS else PERMANENT
    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return TRANSIENT  # connector errors, server disconnects, a body cut off half way
    return None


def _verdict(error: BaseException) -> str | None:
    if isinstance(error, DatasetError):
        return "data"
    if isinstance(error, _PERMANENT_OS_ERRORS):
        return PERMANENT
    if isinstance(error, (ConnectionError, TimeoutError, http.client.IncompleteRead)):
        return TRANSIENT  # resets, refusals, broken pipes, socket/asyncio/fsspec timeouts
    verdict = _library_verdict(error)
    if verdict is not None:
        return verdict
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return TRANSIENT
    return None


def storage_fault(error: BaseException) -> str | None:
    """``"transient"``, ``"permanent"`` or None (not a storage fault), by exception type.

    The first decisive exception along the ``__cause__`` chain wins (s3fs raises its
    translation of a botocore error *from* that error).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _verdict(current)
        if verdict is not None:
            return None if verdict == "data" else verdict
        current = current.__cause__
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a storage fault that a retry can outlive."""
    return storage_fault(error) == TRANSIENT


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # first try included
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


@dataclass(frozen=True)
class StorageSettings:
    """What :func:`configure_storage` takes from the ``data`` config section."""

    s3_max_attempts: int = 5
    s3_retry_mode: str = "standard"
    s3_connect_timeout_s: float = 5.0
    s3_read_timeout_s: float = 30.0
    policy: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        if self.s3_retry_mode not in _RETRY_MODES:
            raise ValueError(f"data.s3_retry_mode must be one of {list(_RETRY_MODES)}, got {self.s3_retry_mode!r}")
        if self.s3_max_attempts < 1 or self.policy.attempts < 1:
            raise ValueError("data.s3_max_attempts and data.storage_retries must be >= 1")
        if min(self.s3_connect_timeout_s, self.s3_read_timeout_s) <= 0 or self.policy.max_delay_s < 0:
            raise ValueError("S3 timeouts must be > 0 and data.storage_retry_max_delay_s >= 0")

    @classmethod
    def from_config(cls, data: Any) -> "StorageSettings":
        """From a :class:`sea_dist.config.DataConfig` (or anything with its fields)."""
        return cls(
            s3_max_attempts=int(data.s3_max_attempts),
            s3_retry_mode=str(data.s3_retry_mode),
            s3_connect_timeout_s=float(data.s3_connect_timeout_s),
            s3_read_timeout_s=float(data.s3_read_timeout_s),
            policy=RetryPolicy(
                attempts=int(data.storage_retries),
                base_delay_s=min(0.5, float(data.storage_retry_max_delay_s)),
                max_delay_s=float(data.storage_retry_max_delay_s),
            ),
        )


def _default_settings() -> StorageSettings:
    from sea_dist.config import DataConfig

    return StorageSettings.from_config(DataConfig())


_settings: StorageSettings | None = None


def storage_settings() -> StorageSettings:
    """The settings in force in this process."""
    global _settings
    if _settings is None:
        _settings = _default_settings()
    return _settings


def configure_storage(data: Any) -> StorageSettings:
    """Apply a ``data`` config section (or :class:`StorageSettings`) to this process's storage
    clients and retries; returns the settings it replaced. Filesystems made before keep theirs."""
    global _settings
    previous = storage_settings()
    _settings = data if isinstance(data, StorageSettings) else StorageSettings.from_config(data)
    return previous


def s3_config_kwargs() -> dict[str, Any]:
    """``botocore.client.Config`` arguments (s3fs ``config_kwargs``) for the settings in force."""
    s = storage_settings()
    return {
        # total_max_attempts counts the first try (botocore's max_attempts would not)
        "retries": {"total_max_attempts": s.s3_max_attempts, "mode": s.s3_retry_mode},
        "connect_timeout": s.s3_connect_timeout_s,
        "read_timeout": s.s3_read_timeout_s,
    }


def _note(error: BaseException, what: str) -> None:
    """Name the operation on the error itself, once (the innermost layer's words win)."""
    notes = getattr(error, "__notes__", [])
    if not any(n.startswith("while ") for n in notes):
        error.add_note(f"while {what}")


def with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``operation``; retry transient storage faults, up to ``policy.attempts`` in all.

    ``what`` names the operation and its path in logs and on the raised error. ``on_retry``
    runs before each retry (e.g. to drop a file handle whose connection broke). Permanent
    faults and errors that are no storage fault are raised at once; a transient fault that
    an inner :func:`with_retries` already gave up on is raised at once too.
    """
    policy = policy or storage_settings().policy
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - classified below
            kind = storage_fault(error)
            if kind is not None:
                _note(error, what)
            gave_up_inside = getattr(error, _GAVE_UP, False)
            if kind != TRANSIENT or gave_up_inside or attempt + 1 == policy.attempts:
                if kind == TRANSIENT and not gave_up_inside:
                    setattr(error, _GAVE_UP, True)
                    if attempt:
                        log.error("%s failed after %d attempts: %s: %s", what, attempt + 1, type(error).__name__, error)
                raise
            delay = policy.delay(attempt)
            log.warning(
                "%s: transient storage error (%s: %s); retry %d/%d in %.1fs",
                what, type(error).__name__, error, attempt + 1, policy.attempts - 1, delay,
            )
            if on_retry is not None:
                on_retry(error)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
