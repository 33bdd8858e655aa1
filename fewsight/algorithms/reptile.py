"""Reptile (Nichol et al. 2018): adapt a copy of the parameters to each task by plain gradient steps
on all of its images, then move the initialisation towards the adapted copies. First order by
construction: no derivative flows through the inner loop."""

from __future__ import annotations

import torch

from fewsight.algorithms.base import MetaLoss
from fewsight.algorithms.maml import MAML
from fewsight.data.episodes import TaskBatch


class Reptile(MAML):
    """Meta-gradient θ − mean_t φ_t, where φ_t is θ after `steps` steps of size `inner_lr` on task t's
    support and query images together. At test time it adapts on the support set, like MAML.
    Takes MAML's arguments (without `first_order`)."""

    def __init__(self, model: torch.nn.Module, **kwargs) -> None:
        super().__init__(model, first_order=True, **kwargs)

    def adapted_mean(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """mean_t φ_t for every adapted parameter (no gradient)."""
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        images = torch.cat([batch.support_x, batch.query_x], dim=1)
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)

        def adapt(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {n: v for n, v in self.adapt_params(params, x, y, self.steps).items() if n in self.adapted}

        def reference() -> dict[str, torch.Tensor]:
            tasks = [
                self.adapt_params_reference(params, x, y, self.steps)
                for x, y in zip(images, labels, strict=True)
            ]
            return {name: torch.stack([task[name] for task in tasks]) for name in self.adapted}

        with torch.no_grad():
            adapted = self._with_fallback(
                lambda: torch.vmap(adapt, randomness="different")(images, labels), reference
            )
        return {name: value.mean(0) for name, value in adapted.items()}

    def meta_loss(self, batch: TaskBatch) -> MetaLoss:
        """Its value is the query loss after adapting on the support set (for the logs); its gradient
        is Reptile's θ − mean φ."""
        self.check_once(batch)
        with torch.no_grad():
            logits = self.query_logits(batch)
        logged = self._loss_and_accuracy(logits, batch)
        target = self.adapted_mean(batch)
        named = dict(self.model.named_parameters())
        pull = sum(0.5 * (named[name] - target[name]).pow(2).sum() for name in self.adapted)
        return MetaLoss(logged.loss + pull - pull.detach(), logged.accuracy)
