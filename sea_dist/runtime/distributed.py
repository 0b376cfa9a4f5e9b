"""The few collective operations the training loop needs, behind one small interface.

The loop talks to :class:`WorkerContext` only, so the same code runs in one plain process
(full-graph mode, unit tests), under ``torch.distributed`` launched by tests, and inside Ray
Train workers (:mod:`sea_dist.train.ray_run` supplies the Ray-specific reporting). It lives outside
``train`` so that evaluation, which gathers scores across ranks, uses it without importing the
trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # report(metrics, checkpoint_dir or None): Ray's report under Ray, a local writer otherwise
    report: Callable[[dict, str | None], None] | None = None

    @classmethod
    def from_process_group(cls, device: torch.device | None = None, **kw) -> "WorkerContext":
        if _is_distributed():
            return cls(dist.get_rank(), dist.get_world_size(), device or torch.device("cpu"), **kw)
        return cls(device=device or torch.device("cpu"), **kw)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order; row counts may differ per rank."""
        if self.world_size == 1:
            return tensor
        sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
        counts = [int(s.item()) for s in sizes]
        padded = tensor.new_zeros((max(counts),) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded.contiguous())
        return torch.cat([g[:c] for g, c in zip(gathered, counts)])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(self, module: torch.nn.Module, weight: float, total_weight: float) -> None:
        """Set every gradient to the ``weight``-weighted mean over workers (one all-reduce).

        With ``weight`` = this worker's row count and ``total_weight`` the world's, a mean
        loss over local rows becomes the gradient of the mean over all rows.
        """
        if self.world_size == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]) * (weight / total_weight)
        self.all_reduce_sum(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _comm_device(self, device: torch.device) -> torch.device:
        """gloo moves CPU tensors only: CUDA tensors are staged through host memory there."""
        return torch.device("cpu") if dist.get_backend() == "gloo" else device

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts[d]`` (any trailing shape) goes to rank ``d``; returns, on CPU, what each
        rank sent here (the split sizes of a following :meth:`all_to_all_rows`)."""
        if self.world_size == 1:
            return counts.cpu()
        send = counts.to(self._comm_device(counts.device)).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send)
        return received.cpu()

    def all_to_all_rows(self, tensor: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Rows ``[sum(send[:d]), sum(send[:d+1]))`` go to rank ``d``; the rows received come
        back in source-rank order, on ``tensor``'s device. Moves exactly the rows asked for
        (``all_to_all_single`` with split sizes: gloo on CPU, NCCL on CUDA)."""
        if self.world_size == 1:
            return tensor
        comm = self._comm_device(tensor.device)
        out = torch.empty((sum(recv),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=comm)
        dist.all_to_all_single(out, tensor.to(comm).contiguous(), recv, send)
        return out.to(tensor.device)

    def broadcast_object(self, obj):
        if self.world_size == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
