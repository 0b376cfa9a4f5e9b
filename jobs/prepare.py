#!/usr/bin/env python
"""Prepare a dataset for partitioned training: `python jobs/prepare.py data.root=URI [options]`.

Writes `<root>/prepared/<version>/` (id maps, DGL partitions, kNN graph, held-out edges,
MANIFEST.json) and prints the manifest as JSON on stdout. A rerun with the same inputs and
settings does nothing. `jobs/train.py train.partitioned=true` runs this itself when needed.
The options are those of jobs/train.py (`--help`); the `prepare.*` and `graph.knn_*` ones
shape the output.
"""
from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.config_cli import ConfigError, parse_args  # noqa: E402
from sea_dist.data.dataset import DatasetError  # noqa: E402
from sea_dist.prepare.job import run_prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(argv, prog="jobs/prepare.py", description=__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepared = run_prepare(cfg)
    except (DatasetError, ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"uri": prepared.uri, "reused": prepared.reused, **prepared.manifest}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
