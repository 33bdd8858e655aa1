"""The model-based family's common form: a network reads a task's support set and predicts the
task's classifier in one forward pass, θ_τ = g(θ, τ), with no inner loop over the backbone.

A subclass says how to predict a head from one task's support set (`task_head`) and how a head
classifies images (`task_logits`); this base runs both for all tasks of a batch at once with
`torch.vmap`, so that every task's batch-norm statistics are its own, as in the MAML family.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms.base import MetaLearner
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import with_context

Head = dict[str, torch.Tensor]


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean feature of each class: features (S, D), labels (S,) in 0..ways-1 -> (ways, D)."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)
    return (one_hot.T @ features) / one_hot.sum(0).clamp(min=1).unsqueeze(1)


class PredictedClassifier(nn.Module):
    """One task's predicted head on the learner's encoder: images (B, C, H, W) -> logits (B, N)."""

    def __init__(self, learner: ParameterPredictor, head: Head, support_x: torch.Tensor) -> None:
        super().__init__()
        self.learner, self.head, self.support_x = learner, head, support_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.task_logits(self.head, x, self.support_x)


class ParameterPredictor(MetaLearner):
    """Base of the model-based learners over an `encoder` that maps images to features (B, D).

    transductive: queries are embedded with their own batch statistics (True) or with the support
    set's (False; needs an encoder whose forward takes `context_size`, as `Conv4(ways=None)`).
    """

    def __init__(self, encoder: nn.Module, transductive: bool = True) -> None:
        super().__init__()
        if not transductive and "context_size" not in inspect.signature(encoder.forward).parameters:
            raise FewsightError("transductive=False needs an encoder whose forward takes context_size")
        self.encoder, self.transductive = encoder, transductive

    def embed(self, x: torch.Tensor, support_x: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Features (B, D) of x; non-transductive queries are normalised with support_x's statistics."""
        return with_context(self.encoder, x, None if self.transductive else support_x, **kwargs)

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        """The head predicted from one task's support set (S, C, H, W), labels (S,)."""
        raise NotImplementedError

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) of images x (B, C, H, W) under one task's head."""
        raise NotImplementedError

    def mix_heads(self, heads: Head, batch: TaskBatch) -> Head:
        """Hook to change the batch's heads (T, ...) during meta-training; default: unchanged."""
        return heads

    def heads_and_logits(self, batch: TaskBatch) -> tuple[Head, torch.Tensor]:
        """Every task's head (dict of (T, ...)) and query logits (T, N*Q, N)."""
        ways = batch.ways
        predict = torch.vmap(lambda x, y: self.task_head(x, y, ways), randomness="different")
        heads = predict(batch.support_x, batch.support_y)
        if self.training:
            heads = self.mix_heads(heads, batch)
        logits = torch.vmap(self.task_logits, randomness="different")(heads, batch.query_x, batch.support_x)
        return heads, logits

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        return self.heads_and_logits(batch)[1]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> PredictedClassifier:
        with torch.no_grad():
            head = self.task_head(support_x, support_y, int(support_y.max()) + 1)
        return PredictedClassifier(self, head, support_x)
