#!/usr/bin/env python
"""Train SEA: `python jobs/train.py [--config FILE] [flags] [section.key=value ...]`.

With no arguments it trains on the bundled default dataset with 2 local Ray workers.
`python jobs/train.py --help` lists every option.
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sea_dist.config_cli import ConfigError, parse_args  # noqa: E402
from sea_dist.data.dataset import DatasetError  # noqa: E402
from sea_dist.train.launcher import run  # noqa: E402
from sea_dist.train.report_table import format_result_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(argv, prog="jobs/train.py", description=__doc__.splitlines()[0])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        summary = run(cfg)
    except (DatasetError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_result_table(summary, cfg.eval.topk))
    print(f"outputs: {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
