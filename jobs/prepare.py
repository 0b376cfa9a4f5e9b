#!/usr/bin/env python
"""Prepare a dataset for partitioned training: `python jobs/prepare.py data.root=URI [options]`.

The same command as `sea-dist prepare` (sea_dist/cli.py), for a checkout that is not installed.
Writes `<root>/prepared/<version>/` (id maps, DGL partitions, kNN graph, held-out edges,
MANIFEST.json) and prints the manifest as JSON on stdout. A rerun with the same inputs and
settings does nothing. `jobs/train.py train.partitioned=true` runs this itself when needed.
The options are those of jobs/train.py (`--help`); the `prepare.*` and `graph.knn_*` ones
shape the output.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.cli import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return prepare(argv, prog="jobs/prepare.py")


if __name__ == "__main__":
    sys.exit(main())
