"""The command line of the jobs: flags and ``section.key=value`` arguments into a validated config.

A thin layer over :mod:`sea_dist.config` (which parses, overrides and validates): this module
only adds argparse, the convenience flags and ``--help``, generated from each field's
``metadata["help"]`` so it can never drift from the code. Precedence: defaults < ``--config``
file < convenience flags < dotted overrides. Only entry points import it (``sea_dist.cli``,
``jobs/``); library code uses :mod:`sea_dist.config`.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from sea_dist.config import (
    Config,
    ConfigError,
    apply_overrides,
    iter_options,
    load_config_file,
    type_name,
    validate_config,
)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def options_help() -> str:
    """Every ``section.key`` with type, default and help text, for ``--help``'s epilog."""
    lines = [
        "configuration options (set in the --config file as [section] key = value, or on the",
        "command line as section.key=value; lists as JSON or comma-separated, bools as",
        "true/false):",
    ]
    current = None
    for key, tp, default, help_text in iter_options():
        section = key.split(".", 1)[0]
        if section != current:
            lines.append(f"\n  [{section}]")
            current = section
        lines.append(f"  {key} ({type_name(tp)}, default {_format_default(default)})")
        lines.append(
            textwrap.fill(help_text, width=88, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    lines.append(
        "\nprecedence: defaults < --config file < convenience flags < section.key=value"
    )
    return "\n".join(lines)


def build_parser(prog: str = "train.py", description: str = "") -> argparse.ArgumentParser:
    """The argument parser used by :func:`parse_args` (exposed for scripts that extend it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or None,
        epilog=options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML (or YAML) config file")
    conv = parser.add_argument_group("convenience flags (shorthands for section.key=value)")
    conv.add_argument("--full-graph", action="store_true", default=None,
                      help="train.full_graph=true: exact full-graph mode in one process")
    conv.add_argument("--resume", action="store_true", default=None,
                      help="train.resume=true: continue train.run_name from its checkpoint")
    conv.add_argument("--output-dir", metavar="DIR", help="output.output_dir")
    conv.add_argument("--warm-start", metavar="URI|latest",
                      help="train.warm_start: start from a published model (see below)")
    conv.add_argument("--num-workers", metavar="N", type=int, help="train.num_workers")
    conv.add_argument("--gpus-per-worker", metavar="G", type=float,
                      help="train.gpus_per_worker; G > 0 also sets train.use_gpu=true")
    conv.add_argument("--epochs", metavar="N", type=int, help="train.epochs")
    conv.add_argument("--use-gpu", action="store_true", default=None,
                      help="train.use_gpu=true")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, applied last (see the list below)")
    return parser


def _flag_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ns.full_graph:
        out["train.full_graph"] = True
    if ns.resume:
        out["train.resume"] = True
    if ns.output_dir is not None:
        out["output.output_dir"] = ns.output_dir
    if ns.warm_start is not None:
        out["train.warm_start"] = ns.warm_start
    if ns.num_workers is not None:
        out["train.num_workers"] = ns.num_workers
    if ns.epochs is not None:
        out["train.epochs"] = ns.epochs
    if ns.use_gpu:
        out["train.use_gpu"] = True
    if ns.gpus_per_worker is not None:
        out["train.gpus_per_worker"] = ns.gpus_per_worker
        if ns.gpus_per_worker > 0:
            out["train.use_gpu"] = True
    return out


def parse_args(
    argv: list[str] | None, prog: str = "train.py", description: str = ""
) -> tuple[Config, argparse.Namespace]:
    """Parse a command line into a validated :class:`Config` (and the raw namespace).

    Precedence: defaults < ``--config`` file < convenience flags < dotted overrides. Any
    configuration problem (missing file, unknown key, bad value, failed
    :func:`validate_config`) exits through ``parser.error`` (status 2, message on stderr), as
    command-line tools conventionally do; library callers wanting exceptions use
    :func:`apply_overrides` / :func:`validate_config` directly.
    """
    parser = build_parser(prog, description)
    # Intermixed, so overrides may sit between flags: `train.py a.b=1 --epochs 3 c.d=2`.
    ns = parser.parse_intermixed_args(argv)
    bad = [o for o in ns.overrides if "=" not in o]
    if bad:
        parser.error(
            f"positional argument(s) {', '.join(map(repr, bad))} must be section.key=value"
        )
    try:
        cfg = Config()
        if ns.config:
            cfg = apply_overrides(cfg, load_config_file(ns.config))
        cfg = apply_overrides(cfg, _flag_overrides(ns))
        cfg = apply_overrides(cfg, ns.overrides)
        validate_config(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg, ns
