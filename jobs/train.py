#!/usr/bin/env python
"""Train SEA: `python jobs/train.py [--config FILE] [flags] [section.key=value ...]`.

The same command as `sea-dist train` (sea_dist/cli.py), for a checkout that is not installed.
With no arguments it trains on the bundled default dataset with 2 local Ray workers;
`python jobs/train.py --help` lists every option.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.cli import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return train(argv, prog="jobs/train.py")


if __name__ == "__main__":
    sys.exit(main())
