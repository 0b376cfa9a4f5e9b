"""The one error type of bad data.

It lives at the bottom of the storage layer, with no imports, so that everything that reads
data (the dataset reader, the feature store, the importers, the retry layer that must tell bad
bytes from a flaky connection) can raise or recognise it without importing one another.
"""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset root breaks the data contract; the message names the file and the problem."""
