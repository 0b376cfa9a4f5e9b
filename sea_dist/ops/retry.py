"""Bounded retries for object-storage I/O: transient faults are retried and logged, permanent
ones fail at once with the original, precise error.

Object stores fail transiently all the time (connection resets, 5xx, throttling, a restarted
endpoint). A nightly job should ride those out; but a missing bucket or a denied request will
not fix itself, and retrying it only delays a clear failure.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED, errno.EAGAIN}
_TRANSIENT_WORDS = (
    "connection", "timed out", "timeout", "throttl", "slowdown", "slow down", "service unavailable",
    "internal error", "internalerror", "503", "500", "502", "504", "temporarily", "reset by peer",
    "could not connect", "endpoint", "broken pipe",
)
_PERMANENT_WORDS = ("nosuchbucket", "no such bucket", "accessdenied", "access denied", "forbidden", "403",
                    "invalidaccesskeyid", "signaturedoesnotmatch")


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` looks like a fault that a retry can outlive."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    text = f"{type(error).__name__} {error}".lower()
    if any(word in text for word in _PERMANENT_WORDS):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    name = type(error).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ResponseStreamingError"):
        return True
    return isinstance(error, OSError) and any(word in text for word in _TRANSIENT_WORDS)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # first try included
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


DEFAULT_POLICY = RetryPolicy()


def with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``; retry transient failures up to ``policy.attempts`` times in all."""
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - classified below
            if not is_transient(error) or attempt + 1 == policy.attempts:
                if attempt:
                    log.error("%s failed after %d attempts: %s", what, attempt + 1, error)
                raise
            delay = policy.delay(attempt)
            log.warning(
                "%s: transient storage error (%s: %s); retry %d/%d in %.1fs",
                what, type(error).__name__, error, attempt + 1, policy.attempts - 1, delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
