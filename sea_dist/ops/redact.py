"""Keep credentials out of everything a run writes or logs.

Credentials reach sea_dist only through the environment (AWS_* variables, read by botocore) —
never through config. The one way a secret can still slip into a config value is a URI with
user info (``s3://KEY:SECRET@bucket/...``); such values are redacted before they are written.
"""
from __future__ import annotations

import re

_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@]+)@")


def redact_uri(value: str) -> str:
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", value)


def redact_config(config: dict) -> dict:
    """A copy of a nested config dict with every string value's URI user info redacted."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out[key] = redact_config(value)
        elif isinstance(value, str):
            out[key] = redact_uri(value)
        else:
            out[key] = value
    return out
