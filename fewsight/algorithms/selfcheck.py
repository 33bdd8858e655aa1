"""The guard behind the vectorised meta-gradient: the same meta-gradient through vmap and through the
plain loop over tasks, compared in float64 on copies of a learner.

The gradient-based learners run it once, on their first meta-gradient (`self_check=True`, the
default), so that a layer whose batching rule is wrong (torch's fused norms were; a future torch may
bring others) cannot train silently on a wrong meta-gradient: on a mismatch they warn and take the
loop. `check_meta_gradient` runs it on demand.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from fewsight.data.episodes import TaskBatch

if TYPE_CHECKING:
    from fewsight.algorithms.maml import MAML

TOLERANCE = 1e-8  # float64 rounding leaves about 1e-14; the wrong rules gave 1e-5 to 1e-1


def _meta_gradient(learner: MAML, batch: TaskBatch, per_task: bool) -> torch.Tensor:
    """The meta-gradient of a float64 copy of `learner`, through vmap or the loop, its model in eval
    mode so that dropout draws no masks (the two paths would draw different ones)."""
    twin = copy.deepcopy(learner).double()
    twin.per_task, twin.self_check = per_task, False
    twin.model.eval()
    leaves = [p for p in twin.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = type(twin).meta_loss(twin, batch).loss  # the class's own, whatever wraps the instance's
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(leaves, grads, strict=True)]
    )


def _reseed(device: torch.device) -> None:
    """Seed the generators the two paths draw from (the CPU's and `device`'s) alike."""
    torch.default_generator.manual_seed(0)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.default_generators[index].manual_seed(0)


@contextlib.contextmanager
def _without_kernel_search() -> Iterator[None]:
    """cuDNN's kernel search (`cudnn.benchmark`) off within, as it was after."""
    searching = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = searching


def check_meta_gradient(learner: MAML, batch: TaskBatch, tasks: int = 2) -> float:
    """Relative difference (Euclidean norm) between the vectorised and the per-task meta-gradient of
    `learner` on the first `tasks` tasks of `batch`, in float64; the learner, its gradients and the
    random generators are left as they were, and both paths draw the same random numbers (Reptile's
    mini-batches). Raises what the vectorised path raises for a model torch.func cannot take."""
    sample = batch.tasks_between(0, min(tasks, batch.tasks))
    sample = replace(sample, support_x=sample.support_x.double(), query_x=sample.query_x.double())
    device = sample.query_x.device
    # float64 throughout, whatever autocast the training loop runs under (bf16 would not compare);
    # no cuDNN kernel search for the check's float64 shapes, which training never meets again.
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.autocast(device.type, enabled=False),
        _without_kernel_search(),
    ):
        _reseed(device)
        vectorised = _meta_gradient(learner, sample, per_task=False)
        _reseed(device)
        reference = _meta_gradient(learner, sample, per_task=True)
    return float((vectorised - reference).norm() / reference.norm().clamp(min=1e-300))
