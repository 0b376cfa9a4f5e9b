"""Command-line and config-file layer over :mod:`sea_dist.config`.

One run is described by a :class:`~sea_dist.config.Config`; this module fills it from, in
increasing precedence:

1. the dataclass defaults,
2. a config file (``--config run.toml``; TOML, or YAML when PyYAML is installed),
3. convenience flags (``--epochs 5``, ``--full-graph``, ...),
4. dotted ``section.key=value`` overrides given as positional arguments.

Overrides are typed by the dataclass field, so a typo or a bad value fails at start-up with
a message naming the key and the valid choices, instead of an hour into a cluster job.
``--help`` is generated from each field's ``metadata["help"]`` so it can never drift from
the code.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import textwrap
import typing
from typing import Any, Iterable, Mapping

from sea_dist.config import Config

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject pins tomli there)
    import tomli as _toml  # type: ignore[no-redef]


class ConfigError(ValueError):
    """A configuration problem the user must fix (bad key, bad value, inconsistent fields)."""


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
CLUB_FIT_CHOICES = ("as_published", "within_modality")
METRIC_CHOICES = ("recall", "ndcg", "precision", "map")


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass (``config.py`` uses postponed annotations)."""
    return typing.get_type_hints(cls)


def _sections(cfg_or_cls: Any = Config) -> dict[str, type]:
    """``{section name: section dataclass}`` of the top-level config."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    hints = _field_types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def iter_options(cfg: Config | None = None) -> Iterable[tuple[str, type, Any, str]]:
    """Yield ``(dotted key, type, current value, help)`` for every option, in declaration order.

    With ``cfg=None`` the values are the defaults. Used by ``--help`` and by tests that check
    every field is documented.
    """
    cfg = cfg if cfg is not None else Config()
    for section_name, section_cls in _sections(cfg).items():
        section = getattr(cfg, section_name)
        hints = _field_types(section_cls)
        for f in dataclasses.fields(section_cls):
            yield (
                f"{section_name}.{f.name}",
                hints[f.name],
                getattr(section, f.name),
                f.metadata.get("help", ""),
            )


def config_to_dict(cfg: Config) -> dict:
    """Nested plain dict (JSON/TOML-serialisable) of ``cfg``, e.g. for ``summary.json``."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# Value parsing
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _parse_scalar(text: str) -> Any:
    """A list element from a string: int if it parses, else float, else the stripped string."""
    text = text.strip()
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _bad(key: str, value: Any, tp: Any, why: str = "") -> ConfigError:
    extra = f" ({why})" if why else ""
    return ConfigError(
        f"invalid value {value!r} for {key}: expected {_type_name(tp)}{extra}"
    )


def parse_value(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a typed value from a file) to
    the field type ``tp``; raises :class:`ConfigError` naming key, value and expected type.

    Strings are accepted for every type because command-line overrides are always strings.
    """
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(key, value, tp, "true/false, yes/no or 1/0")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, tp)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _bad(key, value, tp)
    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, value, tp)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _bad(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML/TOML turn e.g. run_name: 42 into a number; the user meant the text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, value, tp)
    if tp is list or typing.get_origin(tp) is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _bad(key, value, tp, f"invalid JSON list: {exc.msg}") from None
                if not isinstance(parsed, list):
                    raise _bad(key, value, tp)
                return parsed
            return [_parse_scalar(part) for part in text.split(",")]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]  # a single cut-off, e.g. eval.topk=20 from a file
        raise _bad(key, value, tp, "a JSON list or comma-separated values")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------
def _flatten(overrides: Mapping[str, Any] | Iterable[str]) -> list[tuple[str, Any]]:
    """Normalise every accepted override shape to ``[(dotted key, value), ...]``."""
    if isinstance(overrides, Mapping):
        items: list[tuple[str, Any]] = []
        for key, value in overrides.items():
            if isinstance(value, Mapping):
                for sub_key, sub_value in _flatten(value):
                    items.append((f"{key}.{sub_key}", sub_value))
            else:
                items.append((str(key), value))
        return items
    if isinstance(overrides, str):
        overrides = [overrides]
    items = []
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not of the form section.key=value")
        key, value = text.split("=", 1)
        items.append((key.strip(), value))
    return items


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` applied (``cfg`` itself is not modified).

    ``overrides`` is a dict (nested ``{"model": {"knn_k": 20}}`` as read from a file, or flat
    ``{"model.knn_k": "20"}``) or a list of ``"section.key=value"`` strings. Dashes in key
    names are accepted for underscores (``train.batch-size``), as on most command lines.
    """
    new = copy.deepcopy(cfg)
    sections = _sections(new)
    for key, value in _flatten(overrides):
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"unknown key {key!r}: keys are section.key with section one of "
                f"{', '.join(sections)}"
            )
        section_name, field_name = (p.replace("-", "_") for p in parts)
        if section_name not in sections:
            raise ConfigError(
                f"unknown section {parts[0]!r} in key {key!r}; valid sections: "
                f"{', '.join(sections)}"
            )
        section_cls = sections[section_name]
        hints = _field_types(section_cls)
        if field_name not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(section_cls))
            raise ConfigError(
                f"unknown key {key!r}; valid keys of section {section_name!r}: {valid}"
            )
        setattr(
            getattr(new, section_name),
            field_name,
            parse_value(f"{section_name}.{field_name}", value, hints[field_name]),
        )
    return new


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def load_config_file(path: str) -> dict:
    """Read a config file into a (nested) dict for :func:`apply_overrides`.

    ``.toml`` uses the standard library; ``.yaml``/``.yml`` need PyYAML (an optional
    dependency, so TOML is the documented format); ``.json`` is accepted too.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ModuleNotFoundError:
                raise ConfigError(
                    f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML"
                ) from None
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
            data = {} if data is None else data
        elif ext == ".json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        elif ext == ".toml":
            with open(path, "rb") as fh:
                data = _toml.load(fh)
        else:
            raise ConfigError(
                f"{path}: unknown config format {ext or '(no extension)'}; "
                "use .toml, .yaml/.yml or .json"
            )
    except ConfigError:
        raise
    except Exception as exc:  # parse errors from any of the three parsers
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table/mapping of sections")
    return data


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def validate_config(cfg: Config) -> None:
    """Cross-field checks; raises one :class:`ConfigError` listing every problem found.

    Catches configurations that would otherwise fail (or silently do the wrong thing) deep
    inside a distributed run.
    """
    errors: list[str] = []
    g, m, t, e = cfg.graph, cfg.model, cfg.train, cfg.eval

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    positive = {
        "graph.knn_k": g.knn_k,
        "graph.knn_block_size": g.knn_block_size,
        "model.embedding_dim": m.embedding_dim,
        "model.n_ui_layers": m.n_ui_layers,
        "model.proj_hidden_dim": m.proj_hidden_dim,
        "model.proj_out_dim": m.proj_out_dim,
        "model.club_dim": m.club_dim,
        "model.club_hidden": m.club_hidden,
        "train.num_workers": t.num_workers,
        "train.cpus_per_worker": t.cpus_per_worker,
        "train.batch_size": t.batch_size,
        "train.epochs": t.epochs,
        "train.checkpoint_every_epochs": t.checkpoint_every_epochs,
        "eval.user_batch_size": e.user_batch_size,
    }
    for key, value in positive.items():
        need(is_int(value) and value > 0, f"{key} must be a positive integer, got {value!r}")
    non_negative = {
        "model.n_mm_layers": m.n_mm_layers,
        "model.club_inner_steps": m.club_inner_steps,
        "train.max_steps_per_epoch": t.max_steps_per_epoch,
        "train.patience": t.patience,  # MMRec's stopping_step: 0 stops at the first non-improving epoch
    }
    for key, value in non_negative.items():
        need(is_int(value) and value >= 0, f"{key} must be an integer >= 0, got {value!r}")

    need(m.temp > 0, f"model.temp must be > 0, got {m.temp!r}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr!r}")
    for key, value in (
        ("model.alpha_contrast", m.alpha_contrast),
        ("model.ureg", m.ureg),
        ("train.gpus_per_worker", t.gpus_per_worker),
        ("train.progress_every_s", t.progress_every_s),
    ):
        need(value >= 0, f"{key} must be >= 0, got {value!r}")
    need(
        0.0 <= g.mm_image_weight <= 1.0,
        f"graph.mm_image_weight must lie in [0, 1], got {g.mm_image_weight!r}",
    )

    if is_int(t.batch_size) and is_int(t.num_workers) and t.num_workers > 0:
        need(
            t.batch_size >= t.num_workers,
            f"train.batch_size ({t.batch_size}) must be >= train.num_workers "
            f"({t.num_workers}): the global batch is split over the workers",
        )

    if t.partitioned:
        need(not t.full_graph, "train.partitioned and train.full_graph exclude each other")
        need(not t.warm_start, "train.warm_start is not supported in partitioned mode yet")
    need(
        t.lr_scaling in ("none", "sqrt", "linear"),
        f"train.lr_scaling must be none, sqrt or linear, got {t.lr_scaling!r}",
    )
    need(
        t.precision in ("fp32", "bf16"),
        f"train.precision must be fp32 or bf16, got {t.precision!r}",
    )
    need(
        is_int(t.lr_reference_batch) and t.lr_reference_batch > 0,
        f"train.lr_reference_batch must be a positive integer, got {t.lr_reference_batch!r}",
    )
    need(
        t.user_tables in ("sharded", "replicated"),
        f"train.user_tables must be 'sharded' or 'replicated', got {t.user_tables!r}",
    )
    need(
        cfg.prepare.part_method in ("auto", "metis", "random"),
        f"prepare.part_method must be auto, metis or random, got {cfg.prepare.part_method!r}",
    )
    for key, value in (
        ("prepare.num_parts", cfg.prepare.num_parts),
        ("prepare.metis_max_edges", cfg.prepare.metis_max_edges),
        ("prepare.exact_knn_max_items", cfg.prepare.exact_knn_max_items),
        ("eval.max_users", e.max_users),
        ("model.align_max_items", m.align_max_items),
        ("train.feature_cache_rows", t.feature_cache_rows),
        ("train.prefetch_batches", t.prefetch_batches),
        ("train.warmup_steps", t.warmup_steps),
    ):
        need(is_int(value) and value >= 0, f"{key} must be an integer >= 0, got {value!r}")
    need(
        is_int(cfg.prepare.knn_nprobe) and cfg.prepare.knn_nprobe > 0,
        f"prepare.knn_nprobe must be a positive integer, got {cfg.prepare.knn_nprobe!r}",
    )

    fanouts_ok = isinstance(g.fanouts, list) and all(
        is_int(f) and (f > 0 or f == -1) for f in g.fanouts
    )
    need(fanouts_ok, f"graph.fanouts must be positive integers or -1, got {g.fanouts!r}")
    if fanouts_ok and is_int(m.n_ui_layers):
        need(
            len(g.fanouts) == m.n_ui_layers,
            f"graph.fanouts has {len(g.fanouts)} entries but model.n_ui_layers is "
            f"{m.n_ui_layers}: give one fanout per user-item hop",
        )
    need(
        is_int(g.knn_fanout) and (g.knn_fanout > 0 or g.knn_fanout == -1),
        f"graph.knn_fanout must be a positive integer or -1, got {g.knn_fanout!r}",
    )

    need(
        t.negative_items in ("train_items", "all_items"),
        f"train.negative_items must be train_items or all_items, got {t.negative_items!r}",
    )
    need(
        m.club_fit in CLUB_FIT_CHOICES,
        f"model.club_fit must be one of {', '.join(CLUB_FIT_CHOICES)}, got {m.club_fit!r}",
    )

    topk_ok = (
        isinstance(e.topk, list) and len(e.topk) > 0 and all(is_int(k) and k > 0 for k in e.topk)
    )
    need(topk_ok, f"eval.topk must be a non-empty list of positive integers, got {e.topk!r}")
    match = re.fullmatch(r"(recall|ndcg|precision|map)@(\d+)", str(e.valid_metric).lower())
    if not match:
        errors.append(
            f"eval.valid_metric must look like <{'|'.join(METRIC_CHOICES)}>@K, "
            f"got {e.valid_metric!r}"
        )
    elif topk_ok and int(match.group(2)) not in e.topk:
        errors.append(
            f"eval.valid_metric {e.valid_metric!r} uses K={match.group(2)}, "
            f"which is not in eval.topk {e.topk!r}"
        )

    if g.modality_weights:
        w = g.modality_weights
        numeric = all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in w
        )
        if not numeric or any(x < 0 for x in w):
            errors.append(f"graph.modality_weights must be non-negative numbers, got {w!r}")
        elif not math.isclose(sum(w), 1.0, rel_tol=0.0, abs_tol=1e-6):
            errors.append(f"graph.modality_weights must sum to 1, got {w!r} (sum {sum(w)})")

    if t.gpus_per_worker > 0 and not t.use_gpu:
        errors.append(
            f"train.gpus_per_worker={t.gpus_per_worker} needs train.use_gpu=true "
            "(or pass --gpus-per-worker, which sets both)"
        )

    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


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
        lines.append(f"  {key} ({_type_name(tp)}, default {_format_default(default)})")
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
