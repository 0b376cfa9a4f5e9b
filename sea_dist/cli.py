"""The ``sea-dist`` command: one subcommand per job.

    sea-dist train [--config FILE] [flags] [section.key=value ...]    train SEA
    sea-dist prepare data.root=URI [options]                          prepare for partitioned training
    sea-dist synthetic --users N --items N --interactions N --out DIR generate a synthetic dataset
    sea-dist example movielens-100k --out DIR                         build a real-data example dataset

``python jobs/train.py`` and ``python jobs/prepare.py`` are the same commands for a checkout that
is not installed (they call :func:`train` and :func:`prepare`). Every command exits 0 on
success, 2 on a configuration or data error (one ``error:`` line on stderr, no traceback) and
lets anything else propagate: an unexpected failure keeps its traceback for the bug report.
Heavy modules are imported only by the command that needs them, so ``sea-dist --help`` is fast.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

from sea_dist.logs import configure_logging

TRAIN_DESCRIPTION = (
    "Train SEA; with no arguments, on the bundled default dataset with 2 local Ray workers."
)
PREPARE_DESCRIPTION = (
    "Prepare a dataset for partitioned training: writes <root>/prepared/<version>/ (id maps, DGL "
    "partitions, kNN graph, held-out edges, MANIFEST.json) and prints the manifest as JSON. A "
    "rerun with the same inputs and settings does nothing; the options are those of train."
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the user must fix (bad configuration or data): reported as one line, exit 2."""
    from sea_dist.config import ConfigError
    from sea_dist.storage.errors import DatasetError

    return (ConfigError, DatasetError)


def _fail(error: BaseException) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def train(argv: list[str] | None = None, prog: str = "sea-dist train") -> int:
    """Train, print the result table and where the outputs went."""
    from sea_dist.config_cli import parse_args

    cfg, _ = parse_args(argv, prog=prog, description=TRAIN_DESCRIPTION)
    configure_logging()
    from sea_dist.train.launcher import run
    from sea_dist.train.report_table import format_result_table

    try:
        summary = run(cfg)
    except _user_errors() as error:
        return _fail(error)
    print(format_result_table(summary, cfg.eval.topk))
    print(f"outputs: {summary['output_dir']}")
    return 0


def prepare(argv: list[str] | None = None, prog: str = "sea-dist prepare") -> int:
    """Run the prepare job and print its manifest as JSON on stdout."""
    from sea_dist.config_cli import parse_args

    cfg, _ = parse_args(argv, prog=prog, description=PREPARE_DESCRIPTION)
    configure_logging()
    from sea_dist.prepare.job import run_prepare
    from sea_dist.train.preflight import resolve_paths

    try:
        prepared = run_prepare(resolve_paths(cfg))
    except (*_user_errors(), ValueError) as error:
        return _fail(error)
    print(json.dumps({"uri": prepared.uri, "reused": prepared.reused, **prepared.manifest}, indent=2))
    return 0


def synthetic(argv: list[str] | None = None, prog: str = "sea-dist synthetic") -> int:
    """``python -m sea_dist.sources.synthetic``: a deterministic synthetic dataset root."""
    from sea_dist.sources.synthetic import main as synthetic_main

    return int(synthetic_main(argv) or 0)


def example(argv: list[str] | None = None, prog: str = "sea-dist example") -> int:
    """``python -m sea_dist.sources.examples``: a real-data example dataset (examples extra)."""
    from sea_dist.sources.examples import main as examples_main

    configure_logging()  # the build reports its progress through its module logger
    return int(examples_main(argv) or 0)


COMMANDS: dict[str, tuple[Callable[..., int], str]] = {
    "train": (train, "train SEA (the same as python jobs/train.py)"),
    "prepare": (prepare, "prepare a dataset for partitioned training (python jobs/prepare.py)"),
    "synthetic": (synthetic, "generate a synthetic dataset (python -m sea_dist.sources.synthetic)"),
    "example": (example, "build a real-data example dataset (python -m sea_dist.sources.examples)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: sea-dist COMMAND [options]   (sea-dist COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``sea-dist`` console script (``[project.scripts]`` in pyproject.toml)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sea-dist: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command, _ = COMMANDS[name]
    return command(rest, prog=f"sea-dist {name}")


if __name__ == "__main__":
    sys.exit(main())
