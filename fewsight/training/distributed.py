"""Data-parallel meta-training under torchrun: every process adapts its share of each meta-batch
and the meta-gradients are averaged, so N processes compute what one process would.

Every process draws the same meta-batch of task indices from the same seeded generator (indices
are cheap) and gathers and adapts only its own slice of the tasks; the slices are disjoint and
together are the whole batch. The result therefore equals single-process training with the same
total meta-batch and seed, for any world size, which also makes resuming at another world size
exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from fewsight.errors import FewsightError


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True in the process that writes logs, progress bars and checkpoints (rank 0)."""
    return world()[0] == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); return this
    process's device. A no-op outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def share(tasks: int) -> slice:
    """This process's slice of a meta-batch of `tasks` tasks."""
    rank, size = world()
    if tasks % size:
        raise FewsightError(f"--meta-batch {tasks} must be a multiple of the {size} processes")
    part = tasks // size
    return slice(rank * part, (rank + 1) * part)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over all processes, in one all-reduce."""
    _, size = world()
    if size == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= size
    for grad, piece in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(piece.view_as(grad))


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over all processes (a copy)."""
    total = value.clone()
    if world()[1] > 1:
        dist.all_reduce(total)
    return total


def gather(values: torch.Tensor) -> torch.Tensor:
    """1-D tensors of any lengths from all processes, concatenated in rank order."""
    _, size = world()
    if size == 1:
        return values
    lengths = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(size)]
    dist.all_gather(lengths, torch.tensor([len(values)], device=values.device))
    longest = int(max(lengths))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[: int(n)] for piece, n in zip(pieces, lengths, strict=True)])
