"""How sea_dist's processes log: one compact format, third-party chatter at WARNING.

Library code only ever logs to its module's logger (``logging.getLogger(__name__)``); entry
points (``sea_dist.cli``, the dataset sources' ``python -m`` commands) call
:func:`configure_logging` once, so every progress line reaches the console once, on stderr,
with the time and the module it came from. Its own module, with no imports from sea_dist, so
that an entry point below the CLI (a dataset source) can use it without importing the CLI.
"""
from __future__ import annotations

import logging
import os

__all__ = ["configure_logging", "QUIET_LOGGERS"]

#: Loggers that speak on INFO although nothing they say is for the user of a training run.
QUIET_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data", "filelock", "fsspec", "botocore", "aiobotocore", "s3fs")


def configure_logging(level: int = logging.INFO) -> None:
    """One compact format for sea_dist's own progress lines; third-party chatter at WARNING."""
    # DGL otherwise announces on stderr, in every process of a fresh machine, that no backend
    # was selected and that it picked (and saved) PyTorch.
    os.environ.setdefault("DGLBACKEND", "pytorch")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
