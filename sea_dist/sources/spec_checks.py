"""Checks shared by the synthetic generators' specs (in-memory and streaming, by duck typing).

Their own module so that the two generators share them without importing each other.
"""
from __future__ import annotations

from typing import Any

__all__ = ["check_common_spec", "count_cap"]


def check_common_spec(spec: Any) -> None:
    """Checks shared by every generator spec (also the streaming one's, by duck typing)."""
    if spec.n_users < 1 or spec.n_items < 1:
        raise ValueError(f"need at least one user and one item, got {spec.n_users} x {spec.n_items}")
    if spec.min_per_user < 3:
        raise ValueError("min_per_user must be >= 3 so every user has train, valid and test rows")
    if spec.n_items < spec.min_per_user:
        raise ValueError(f"n_items={spec.n_items} < min_per_user={spec.min_per_user}")
    if spec.n_interactions < spec.min_per_user * spec.n_users:
        raise ValueError(
            f"n_interactions={spec.n_interactions} < min_per_user*n_users="
            f"{spec.min_per_user * spec.n_users}"
        )
    cap = count_cap(spec)
    if spec.n_interactions > cap * spec.n_users:
        raise ValueError(
            f"n_interactions={spec.n_interactions} exceeds {cap} per user x {spec.n_users} users "
            "(at most half the catalogue per user)"
        )
    if not spec.modalities:
        raise ValueError("need at least one modality")
    for m, d in spec.modalities.items():
        if not m or "/" in m:
            raise ValueError(f"modality name {m!r} is not a valid folder name")
        if int(d) < 2 or int(d) % 2:
            raise ValueError(f"modality {m!r}: dim {d} must be even and >= 2 (SEA splits it in halves)")


def count_cap(spec: Any) -> int:
    """Most interactions one user may get: half the catalogue keeps the sampler meaningful."""
    return max(spec.min_per_user, spec.n_items // 2)
