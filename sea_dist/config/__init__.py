"""Run configuration: typed sections that check themselves, filled from files and overrides.

:mod:`~sea_dist.config.sections` holds the dataclasses (one per section, each with its
``problems()``), :mod:`~sea_dist.config.parse` fills them from a file and ``section.key=value``
overrides, :mod:`~sea_dist.config.checks` the error type. This package is their one public
face: everything that needs a config imports it from ``sea_dist.config``.
"""
from __future__ import annotations

from sea_dist.config.checks import CLUB_FIT_CHOICES, METRIC_CHOICES, ConfigError
from sea_dist.config.parse import (
    apply_overrides,
    config_to_dict,
    iter_options,
    load_config_file,
    parse_value,
    type_name,
)
from sea_dist.config.sections import (
    Config,
    DataConfig,
    EvalConfig,
    GraphConfig,
    MetricsConfig,
    ModelConfig,
    OutputConfig,
    PrepareConfig,
    TrainConfig,
    validate_config,
)

__all__ = [
    "CLUB_FIT_CHOICES",
    "METRIC_CHOICES",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GraphConfig",
    "MetricsConfig",
    "ModelConfig",
    "OutputConfig",
    "PrepareConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "iter_options",
    "load_config_file",
    "parse_value",
    "type_name",
    "validate_config",
]
