"""The pieces of the per-user tables that every layout shares: initial values, row ownership,
traffic counts, and the rows one step works on (:class:`GatheredRows`).

Initial values come from :func:`init_rows`: fixed-size chunks of the global id space, each
drawn by its own generator seeded with ``(seed, chunk index)``. A row's initial value
therefore depends neither on the world size nor on the bounds, each rank draws only the chunks
overlapping its range, and :func:`init_user_tables` gives a full replica the identical values,
so sharded and replicated runs start from the same tables.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from sea_dist.model.sea import UserTables, _xavier_normal_std

#: Rows per init chunk. Part of the init's definition: changing it changes the initial values.
INIT_CHUNK_ROWS = 65_536
ID_BYTES = 8  # int64 row ids travel with gradients and requests


# ---- deterministic, world-size-independent initialisation ---------------------------------
def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    # SeedSequence mixes (seed, chunk) so neighbouring chunks get unrelated streams
    mixed = int(np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed)


@torch.no_grad()
def init_rows(
    preferences: Sequence[torch.Tensor],
    modality_weights: torch.Tensor,
    start: int,
    n_users: int,
    seed: int,
    chunk_rows: int = INIT_CHUNK_ROWS,
) -> None:
    """Fill storage for global rows ``[start, start + len)`` with their reference-style init.

    Same distributions as ``UserTables.reset_parameters`` (xavier-normal preferences, softmax
    of xavier-normal modality weights, fans from the *global* ``n_users``), drawn per chunk, so
    any range gets the values a full table has in that range.
    """
    stop = start + modality_weights.shape[0]
    n_mod = modality_weights.shape[1]
    pref_std = [_xavier_normal_std(p.shape[1], n_users) for p in preferences]
    weight_std = _xavier_normal_std(n_mod, n_users)
    for chunk in range(start // chunk_rows, -(-stop // chunk_rows)):
        c0, c1 = chunk * chunk_rows, min((chunk + 1) * chunk_rows, n_users)
        lo, hi = max(start, c0), min(stop, c1)
        g = _chunk_generator(seed, chunk)
        for table, std in zip(preferences, pref_std):
            values = torch.empty(c1 - c0, table.shape[1]).normal_(0.0, std, generator=g)
            table[lo - start : hi - start] = values[lo - c0 : hi - c0]
        noise = torch.empty(c1 - c0, n_mod).normal_(0.0, weight_std, generator=g)
        modality_weights[lo - start : hi - start] = torch.softmax(noise[lo - c0 : hi - c0], dim=1)


def init_user_tables(tables: UserTables, seed: int, chunk_rows: int = INIT_CHUNK_ROWS) -> UserTables:
    """Give a full ``UserTables`` the per-chunk init, identical to every sharded layout's."""
    prefs = [tables.preferences[m].weight.data for m in tables.modalities]
    init_rows(prefs, tables.modality_weights.weight.data, 0, tables.n_users, seed, chunk_rows)
    return tables


# ---- ownership ----------------------------------------------------------------------------
def even_bounds(n_users: int, world_size: int) -> list[int]:
    """Contiguous ranges of near-equal size: ``bounds[r]`` is rank ``r``'s first id."""
    return [n_users * r // world_size for r in range(world_size + 1)]


def owner_of(ids: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Rank owning each id (``bounds[r] <= id < bounds[r+1]``); empty ranges own nothing."""
    return torch.searchsorted(bounds, ids, right=True) - 1


# ---- traffic ------------------------------------------------------------------------------
class TrafficStats:
    """What this rank exchanged with *other* ranks in one step (own rows never leave it).

    ``lookup_rows_*``: table rows served to / fetched from other ranks by ``gather``.
    ``grad_rows_*``: gradient rows, summed over tables, sent to / received from other ranks; the
    replicated path all-gathers, so each of its own rows counts once per peer.
    ``bytes_*``: payload bytes (request ids, rows, gradient ids and values); the split-size
    messages (``world_size`` ints per collective) and the all-gather padding are left out.
    """

    FIELDS = ("lookup_rows_sent", "lookup_rows_received", "grad_rows_sent", "grad_rows_received",
              "bytes_sent", "bytes_received")

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, 0)

    @property
    def rows_sent(self) -> int:
        return self.lookup_rows_sent + self.grad_rows_sent

    @property
    def rows_received(self) -> int:
        return self.lookup_rows_received + self.grad_rows_received

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        return f"TrafficStats({self.as_dict()})"


# ---- the rows a step works on -------------------------------------------------------------
class RowLookup:
    """Stands in for one ``nn.Embedding`` over the gathered ids: ``lookup(ids)`` returns rows
    of the leaf tensor, and records which rows it served — those, like a sparse embedding's
    gradient, are the rows whose gradient goes back to the owner (even when it is zero)."""

    def __init__(self, ids: torch.Tensor, leaf: torch.Tensor):
        self.ids, self.leaf = ids, leaf
        self.touched = torch.zeros(ids.numel(), dtype=torch.bool, device=ids.device)
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        query = query.to(device=self.ids.device, dtype=torch.int64).reshape(-1)
        n = query.numel()
        if n <= self.ids.numel() and torch.equal(query, self.ids[:n]):  # the model's case
            self.touched[:n] = True
            return self.leaf[:n]
        if self.ids.numel() == 0:
            raise KeyError("lookup of ids that were not gathered")
        if self._sorted is None:
            self._sorted = torch.sort(self.ids)
        values, index = self._sorted
        pos = torch.searchsorted(values, query).clamp_(max=values.numel() - 1)
        if not torch.equal(values[pos], query):
            raise KeyError("lookup of ids that were not gathered")
        self.touched[index[pos]] = True
        return self.leaf[index[pos]]


class GatheredRows:
    """The rows of ``ids`` for one step, usable where the model expects ``UserTables``:
    ``rows.modality_weights(ids)``, ``rows.preferences[m](ids)`` and ``rows.modalities``.
    Lookups take ``ids`` or any subset (a prefix is a view). No ``.weight``: the full-graph
    forward needs every row and is not served by sharded tables."""

    def __init__(self, ids: torch.Tensor, modalities: list[str], leaves: list[torch.Tensor]):
        self.ids = ids
        self.modalities = list(modalities)
        self.preferences = {m: RowLookup(ids, leaf) for m, leaf in zip(modalities, leaves)}
        self.modality_weights = RowLookup(ids, leaves[-1])

    def lookups(self) -> list[RowLookup]:
        """In table order: one per modality, then the modality weights."""
        return [self.preferences[m] for m in self.modalities] + [self.modality_weights]


class UserTableStore(Protocol):
    """What the trainer needs from its per-user tables, sharded or replicated."""

    traffic: TrafficStats

    def gather(self, ids: torch.Tensor) -> GatheredRows | UserTables: ...
    def push_gradients(self, rows: GatheredRows | UserTables) -> None: ...
    def step(self) -> TrafficStats: ...
    def zero_grad(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def rows_state(self) -> dict: ...
    def load_rows(self, state: dict) -> None: ...
    def gather_full(self) -> dict[str, torch.Tensor] | None: ...
