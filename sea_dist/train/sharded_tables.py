"""Per-user tables sharded by owner, updated sparsely; and the replicated tables behind the same API.

At catalog scale (tens of millions of users) no worker can hold every user's rows plus their
two Adam moments, so rank ``r`` owns the contiguous global ids ``[bounds[r], bounds[r+1])``
and stores only those rows and their ``SparseAdam`` state. One training step:

1. :meth:`ShardedTables.gather` sends each requested id to its owner and gets the rows back
   as fresh leaf tensors, wrapped in a :class:`GatheredRows` that the unchanged model code
   uses in place of :class:`~sea_dist.model.sea.UserTables`;
2. after ``loss.backward()``, :meth:`ShardedTables.push_gradients` sends every touched row's
   gradient back to its owner, which sums the contributions of all ranks and divides by the
   world size (the averaging DDP and the replicated path apply);
3. :meth:`ShardedTables.step` runs ``SparseAdam`` on the local shard.

Both exchanges use ``torch.distributed.all_to_all_single`` with per-rank split sizes: gloo
implements it for CPU tensors (checked on torch 2.13) and NCCL for CUDA ones, and it moves
exactly the requested rows — traffic grows with the rows a step touches, never with the table
size. Split sizes are exchanged first with an equal-split ``all_to_all_single`` of
``world_size`` ints. Under gloo, CUDA tensors are staged through host memory.

Initial values, row ownership, traffic counts and the gathered rows a step works on are in
:mod:`sea_dist.train.table_rows`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from sea_dist.model.sea import UserTables
from sea_dist.runtime.distributed import WorkerContext
from sea_dist.train.sparse_tables import sparse_embeddings, synchronize_sparse_gradients
from sea_dist.train.table_rows import (
    ID_BYTES,
    INIT_CHUNK_ROWS,
    GatheredRows,
    RowLookup,
    TrafficStats,
    UserTableStore,
    even_bounds,
    init_rows,
    init_user_tables,
    owner_of,
)

__all__ = [
    "GatheredRows", "ReplicatedTables", "RowLookup", "ShardedTables", "TrafficStats", "UserTableStore",
    "build_user_tables", "even_bounds", "init_rows", "init_user_tables", "owner_of",
]


# ---- owner-sharded tables -----------------------------------------------------------------
class _Shard(nn.Module):
    """Local rows under UserTables' parameter names, so state dicts line up; allocated without
    drawing from the global RNG (the caller initialises them)."""

    def __init__(self, n_rows: int, modalities: list[str], dim: int, device: torch.device):
        super().__init__()

        def table(width: int) -> nn.Embedding:
            weight = torch.empty(n_rows, width, device=device)
            return nn.Embedding(n_rows, width, sparse=True, _weight=weight)

        self.preferences = nn.ModuleDict({m: table(dim) for m in modalities})
        self.modality_weights = table(len(modalities))


class _SparseAdamTables:
    """What both table layouts share: one SparseAdam over the rows this rank holds, and a
    traffic count per step."""

    optimizer: torch.optim.SparseAdam
    traffic: TrafficStats

    def step(self) -> TrafficStats:
        """Apply SparseAdam to the rows held here; returns this step's traffic and starts a new count."""
        self.optimizer.step()
        done, self.traffic = self.traffic, TrafficStats()
        return done

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def held_rows(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Preference rows (one tensor per modality) and modality weights of ``ids``, which
        this rank must hold (its own users when sharded): no collective, no gradient — what
        inference reads for the users it computes."""
        tables = self._held_tables()
        with torch.no_grad():
            local = self._held_index(ids.to(device=tables[0].weight.device, dtype=torch.int64))
            return [t.weight[local] for t in tables[:-1]], tables[-1].weight[local]

    def _held_tables(self) -> list[nn.Embedding]:
        raise NotImplementedError

    def _held_index(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rows_state(self) -> dict:
        """The rows only, without optimizer state (the best epoch's copy needs no moments:
        a third of the memory and of its checkpoint bytes)."""
        raise NotImplementedError

    def load_rows(self, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return dict(self.rows_state(), optimizer=self.optimizer.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.load_rows(state)
        self.optimizer.load_state_dict(state["optimizer"])


class ShardedTables(_SparseAdamTables):
    """This rank's rows ``[bounds[rank], bounds[rank+1])`` of the user tables, and their optimizer.

    ``gather``, ``push_gradients`` and ``gather_full`` are collectives: every rank calls them
    in the same order (a rank with no ids passes an empty tensor). Tables and the returned leaf
    rows live on ``ctx.device``.
    """

    def __init__(
        self,
        n_users: int,
        modalities: list[str],
        dim: int,
        bounds: Sequence[int] | torch.Tensor,
        ctx: WorkerContext,
        lr: float,
        seed: int,
        init_chunk_rows: int = INIT_CHUNK_ROWS,
    ):
        bounds_list = [int(b) for b in bounds]
        if (len(bounds_list) != ctx.world_size + 1 or bounds_list[0] != 0 or bounds_list[-1] != n_users
                or any(a > b for a, b in zip(bounds_list, bounds_list[1:]))):
            raise ValueError(f"bounds {bounds_list} do not split {n_users} users over {ctx.world_size} ranks")
        self.n_users, self.modalities, self.dim, self.ctx = n_users, list(modalities), dim, ctx
        self.device = ctx.device
        self.bounds = torch.tensor(bounds_list, dtype=torch.int64, device=self.device)
        self.bounds_list = bounds_list
        self.lo, self.hi = bounds_list[ctx.rank], bounds_list[ctx.rank + 1]
        self.local = _Shard(self.hi - self.lo, self.modalities, dim, self.device)
        init_rows([t.weight.data for t in self._tables()[:-1]], self.local.modality_weights.weight.data,
                  self.lo, n_users, seed, init_chunk_rows)
        self.optimizer = torch.optim.SparseAdam(list(self.local.parameters()), lr=lr)
        self.widths = [dim] * len(self.modalities) + [len(self.modalities)]
        self.traffic = TrafficStats()

    def _tables(self) -> list[nn.Embedding]:
        return [self.local.preferences[m] for m in self.modalities] + [self.local.modality_weights]

    def _held_tables(self) -> list[nn.Embedding]:
        return self._tables()

    def _held_index(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < self.lo or int(ids.max()) >= self.hi):
            raise IndexError(f"rank {self.ctx.rank} holds user ids [{self.lo}, {self.hi}) only")
        return ids - self.lo

    # -- communication
    def _exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        return self.ctx.exchange_counts(counts)

    def _all_to_all(
        self, tensor: torch.Tensor, send: list[int], recv: list[int], count: bool = True
    ) -> torch.Tensor:
        """:meth:`WorkerContext.all_to_all_rows`, counting off-rank bytes into ``self.traffic``."""
        if self.ctx.world_size == 1:
            return tensor
        row_bytes = math.prod(tensor.shape[1:]) * tensor.element_size()
        if count:
            me = self.ctx.rank
            self.traffic.bytes_sent += (sum(send) - send[me]) * row_bytes
            self.traffic.bytes_received += (sum(recv) - recv[me]) * row_bytes
        return self.ctx.all_to_all_rows(tensor, send, recv).to(self.device)

    # -- one step
    def gather(self, ids: torch.Tensor) -> GatheredRows:
        """Fetch the rows of ``ids`` (unique global ids, e.g. ``batch.input_users``) from their
        owners; returns them in request order as leaves that collect this step's gradient."""
        ids = ids.to(device=self.device, dtype=torch.int64).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_users):
            raise IndexError(f"user ids outside [0, {self.n_users})")
        owners = owner_of(ids, self.bounds)
        order = torch.argsort(owners, stable=True)
        send = torch.bincount(owners, minlength=self.ctx.world_size)
        recv = self._exchange_counts(send).tolist()
        send = send.tolist()
        me = self.ctx.rank
        self.traffic.lookup_rows_received += sum(send) - send[me]
        self.traffic.lookup_rows_sent += sum(recv) - recv[me]
        wanted = self._all_to_all(ids[order], send, recv) - self.lo
        with torch.no_grad():
            payload = torch.cat([t.weight[wanted] for t in self._tables()], dim=1)
        replies = self._all_to_all(payload, recv, send)
        rows = torch.empty_like(replies)
        rows[order] = replies
        leaves = [part.clone().requires_grad_() for part in rows.split(self.widths, dim=1)]
        return GatheredRows(ids, self.modalities, leaves)

    def push_gradients(self, rows: GatheredRows) -> None:
        """Send each touched row's gradient to its owner; the owner stores the world average
        (sum over ranks / world size) as the sparse gradient of its shard. Every local table
        gets a gradient, empty if nobody touched it, so SparseAdam's per-table step count
        advances exactly as on a replica."""
        world, me = self.ctx.world_size, self.ctx.rank
        per_table = []  # (ids sorted by owner, grads in that order, offsets per owner)
        counts = torch.zeros(world, len(self.widths), dtype=torch.int64)
        for t, (lookup, width) in enumerate(zip(rows.lookups(), self.widths)):
            grad = lookup.leaf.grad
            pos = lookup.touched.nonzero().squeeze(1) if grad is not None else rows.ids[:0]
            ids = rows.ids[pos]
            owners = owner_of(ids, self.bounds)
            order = torch.argsort(owners, stable=True)
            counts[:, t] = torch.bincount(owners, minlength=world).cpu()
            values = grad[pos[order]] if grad is not None else lookup.leaf.new_zeros((0, width))
            per_table.append((ids[order], values.detach()))
        recv_counts = self._exchange_counts(counts)
        sent_rows, recv_rows = counts.sum(1).tolist(), recv_counts.sum(1).tolist()
        self.traffic.grad_rows_sent += sum(sent_rows) - sent_rows[me]
        self.traffic.grad_rows_received += sum(recv_rows) - recv_rows[me]

        # pack (destination, table)-major: ids in one buffer, flattened values in another
        offsets = torch.cat([torch.zeros(1, len(self.widths), dtype=torch.int64), counts.cumsum(0)]).tolist()
        id_parts, value_parts = [], []
        for d in range(world):
            for t, (ids, values) in enumerate(per_table):
                id_parts.append(ids[offsets[d][t] : offsets[d + 1][t]])
                value_parts.append(values[offsets[d][t] : offsets[d + 1][t]].reshape(-1))
        widths = torch.tensor(self.widths)
        got_ids = self._all_to_all(torch.cat(id_parts), sent_rows, recv_rows)
        got_values = self._all_to_all(
            torch.cat(value_parts), (counts * widths).sum(1).tolist(), (recv_counts * widths).sum(1).tolist()
        )

        # unpack per (source, table), then one coalesced sparse gradient per local table
        ids_by_table: list[list[torch.Tensor]] = [[] for _ in self.widths]
        values_by_table: list[list[torch.Tensor]] = [[] for _ in self.widths]
        id_at = value_at = 0
        for s in range(world):
            for t, width in enumerate(self.widths):
                n = int(recv_counts[s, t])
                ids_by_table[t].append(got_ids[id_at : id_at + n])
                values_by_table[t].append(got_values[value_at : value_at + n * width].view(n, width))
                id_at, value_at = id_at + n, value_at + n * width
        for table, ids, values in zip(self._tables(), ids_by_table, values_by_table):
            grad = torch.sparse_coo_tensor(  # ids were routed here by owner_of: in range
                (torch.cat(ids) - self.lo).unsqueeze(0), torch.cat(values) / world, table.weight.shape,
                check_invariants=False,
            )
            table.weight.grad = (grad if table.weight.grad is None else table.weight.grad + grad).coalesce()

    # -- checkpoints and export
    def rows_state(self) -> dict:
        """This rank's shard only (:meth:`state_dict` adds its SparseAdam state) and the
        bounds it was cut with."""
        return {"bounds": self.bounds_list, "tables": self.local.state_dict()}

    def load_rows(self, state: dict) -> None:
        if list(state["bounds"]) != self.bounds_list:
            raise ValueError(
                f"checkpoint shard bounds {state['bounds']} differ from {self.bounds_list}: resharding "
                "needs gather_full() and load_full_tables() (small tables only)"
            )
        self.local.load_state_dict(state["tables"])

    def load_full_tables(self, full: dict[str, torch.Tensor]) -> None:
        """Take this rank's rows from a full ``UserTables`` state dict (warm start, resharding;
        the full dict is in every rank's memory, so small tables only). Optimizer state is kept."""
        self.local.load_state_dict({k: v[self.lo : self.hi] for k, v in full.items()})

    def gather_full(self) -> dict[str, torch.Tensor] | None:
        """Collective: the full ``UserTables`` state dict on rank 0 (CPU), ``None`` elsewhere.

        For tests, small graphs and small exports: rank 0 holds the whole table. Large exports
        should write each rank's ``state_dict()['tables']`` rows to its own file instead.
        """
        with torch.no_grad():
            payload = torch.cat([t.weight for t in self._tables()], dim=1)
        world = self.ctx.world_size
        send = [self.hi - self.lo if d == 0 else 0 for d in range(world)]
        shard_sizes = [b - a for a, b in zip(self.bounds_list, self.bounds_list[1:])]
        recv = shard_sizes if self.ctx.rank == 0 else [0] * world
        full = self._all_to_all(payload, send, recv, count=False)
        # senders may return before rank 0 has read everything; export is often the last
        # collective, and a peer exiting mid-receive aborts gloo
        self.ctx.barrier()
        if self.ctx.rank != 0:
            return None
        parts = full.cpu().split(self.widths, dim=1)
        state = {f"preferences.{m}.weight": p.clone() for m, p in zip(self.modalities, parts)}
        state["modality_weights.weight"] = parts[-1].clone()
        return state


# ---- replicated tables, same interface ----------------------------------------------------
class ReplicatedTables(_SparseAdamTables):
    """A full ``UserTables`` replica per rank, kept identical by all-gathering sparse gradients
    (:func:`~sea_dist.train.sparse_tables.synchronize_sparse_gradients`). ``gather`` returns the
    replica itself, so the step is exactly today's replicated path."""

    def __init__(
        self,
        n_users: int,
        modalities: list[str],
        dim: int,
        ctx: WorkerContext,
        lr: float,
        seed: int,
        init_chunk_rows: int = INIT_CHUNK_ROWS,
    ):
        self.ctx = ctx
        with torch.random.fork_rng(devices=[]):  # UserTables' own init must not move the global RNG
            self.tables = UserTables(n_users, list(modalities), dim, sparse=True)
        init_user_tables(self.tables, seed, init_chunk_rows).to(ctx.device)
        self.optimizer = torch.optim.SparseAdam(list(self.tables.parameters()), lr=lr)
        self.traffic = TrafficStats()

    def gather(self, ids: torch.Tensor) -> UserTables:
        return self.tables

    def _held_tables(self) -> list[nn.Embedding]:
        return [self.tables.preferences[m] for m in self.tables.modalities] + [self.tables.modality_weights]

    def _held_index(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def push_gradients(self, rows: GatheredRows | UserTables | None = None) -> None:
        peers = self.ctx.world_size - 1
        for embedding in sparse_embeddings(self.tables):
            grad = embedding.weight.grad
            own = 0 if grad is None else grad.coalesce()._nnz()
            total = synchronize_sparse_gradients(embedding, self.ctx)
            row_bytes = ID_BYTES + embedding.weight.shape[1] * embedding.weight.element_size()
            self.traffic.grad_rows_sent += own * peers
            self.traffic.grad_rows_received += total - own
            self.traffic.bytes_sent += own * peers * row_bytes
            self.traffic.bytes_received += (total - own) * row_bytes

    def rows_state(self) -> dict:
        return {"tables": self.tables.state_dict()}

    def load_rows(self, state: dict) -> None:
        self.tables.load_state_dict(state["tables"])

    def load_full_tables(self, full: dict[str, torch.Tensor]) -> None:
        self.tables.load_state_dict(full)

    def gather_full(self) -> dict[str, torch.Tensor] | None:
        """Same contract as the sharded one: the full state dict on rank 0, ``None`` elsewhere."""
        if self.ctx.rank != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.tables.state_dict().items()}


def build_user_tables(
    kind: str,
    n_users: int,
    modalities: list[str],
    dim: int,
    ctx: WorkerContext,
    lr: float,
    seed: int,
    bounds: Sequence[int] | None = None,
) -> ShardedTables | ReplicatedTables:
    """``train.user_tables``: ``"sharded"`` (``bounds`` default: :func:`even_bounds`) or ``"replicated"``."""
    if kind == "sharded":
        bounds = even_bounds(n_users, ctx.world_size) if bounds is None else bounds
        return ShardedTables(n_users, modalities, dim, bounds, ctx, lr, seed)
    if kind == "replicated":
        return ReplicatedTables(n_users, modalities, dim, ctx, lr, seed)
    raise ValueError(f"user_tables must be 'sharded' or 'replicated', not {kind!r}")
