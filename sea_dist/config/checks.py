"""What the config sections share to check themselves: the error type and the wording of checks.

Its own module so that the sections (:mod:`sea_dist.config.sections`) and the parser
(:mod:`sea_dist.config.parse`) both raise :class:`ConfigError` without importing each other.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "CLUB_FIT_CHOICES", "CLUB_KERNEL_CHOICES", "METRIC_CHOICES", "Checks", "is_int"]
CLUB_KERNEL_CHOICES = ("auto", "native", "torch")

CLUB_FIT_CHOICES = ("as_published", "within_modality")
METRIC_CHOICES = ("recall", "ndcg", "precision", "map")


class ConfigError(ValueError):
    """A configuration problem the user must fix (bad key, bad value, inconsistent fields)."""


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Checks:
    """Collects one section's problems, with the messages every section words the same way."""

    def __init__(self, section: Any, name: str):
        self.section, self.name, self.problems = section, name, []

    def need(self, ok: bool, msg: str) -> None:
        if not ok:
            self.problems.append(msg)

    def positive_int(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self.section, key)
            self.need(is_int(value) and value > 0, f"{self.name}.{key} must be a positive integer, got {value!r}")

    def non_negative_int(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self.section, key)
            self.need(is_int(value) and value >= 0, f"{self.name}.{key} must be an integer >= 0, got {value!r}")

    def non_negative(self, *keys: str) -> None:
        for key in keys:
            value = getattr(self.section, key)
            self.need(value >= 0, f"{self.name}.{key} must be >= 0, got {value!r}")
