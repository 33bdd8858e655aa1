"""The interface every algorithm offers: a meta-training loss over a batch of tasks, and `adapt`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.data.episodes import TaskBatch


@dataclass
class MetaLoss:
    """Mean query cross-entropy over the tasks of a batch (differentiable) and query accuracy."""

    loss: torch.Tensor
    accuracy: torch.Tensor


class MetaLearner(nn.Module):
    """Base of all algorithms. Its parameters are what the meta-optimiser updates.

    Subclasses implement `query_logits` (all tasks of a batch at once) and `adapt` (one task).
    `.train()` and `.eval()` switch between meta-training and meta-test behaviour, as in PyTorch.
    `replayed` is True while the meta-step is recorded and replayed as a CUDA graph, where the Python
    a path runs costs nothing: a learner may then take another path, with other kernels. Where it has
    one (`has_replayed_path`), the recording times both paths and keeps the faster
    (`fewsight.training.graphs.GraphedTrainingStep`).
    """

    replayed = False

    def has_replayed_path(self) -> bool:
        """Whether `replayed` changes the path a recorded step takes."""
        return False

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Logits (T, N*Q, N) of every task's queries after adapting to its support set."""
        raise NotImplementedError

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> nn.Module:
        """A classifier for one task: support (S, C, H, W) and labels (S,) in 0..N-1 -> module
        mapping images (B, C, H, W) to logits (B, N)."""
        raise NotImplementedError

    def schedule(self, step: int) -> None:
        """Tell the learner the meta-training step about to run (1, 2, ...), for schedules such as
        MAML++'s; the training loop calls it before every step. Most algorithms have none."""

    def step_variant(self) -> tuple:
        """A value that changes when the meta-training step's computation changes, not just its
        numbers (MAML++ switches from first- to second-order): a CUDA graph recorded for one variant
        must be recorded again for the next."""
        return ()

    def meta_loss(self, batch: TaskBatch) -> MetaLoss:
        """Query loss after adaptation, averaged over the tasks: call `.backward()` on `.loss`."""
        return self._loss_and_accuracy(self.query_logits(batch), batch)

    @staticmethod
    def _loss_and_accuracy(logits: torch.Tensor, batch: TaskBatch) -> MetaLoss:
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return MetaLoss(loss, accuracy)
