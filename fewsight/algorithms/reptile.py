"""Reptile (Nichol et al. 2018): adapt a copy of the parameters to each task by gradient steps on its
images, then move the initialisation towards the adapted copies. First order by construction: no
derivative flows through the inner loop.

Its reference code (openai/supervised-reptile) takes its inner steps with Adam (β1 = 0, so a step is
lr · g / √v) on mini-batches of a task's images, Adam's second moment v carried from task to task
through the whole run. `inner_optimizer="adam"` keeps v as a buffer: fixed within a meta-step (where
the reference's v moves by about 4%), updated once per meta-step from the squared gradients of the
tasks' first inner step, decayed as much as the reference's per-step updates decay it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fewsight.algorithms.base import MetaLoss
from fewsight.algorithms.maml import MAML, Params, descend
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETA2, ADAM_EPSILON = 0.999, 1e-8  # TensorFlow's Adam defaults, as the reference code runs them


class Reptile(MAML):
    """Meta-gradient θ − mean_t φ_t, where φ_t is θ after `steps` inner steps on task t's support and
    query images together: plain steps of `inner_lr`, or Adam's (`inner_optimizer="adam"`), each on
    all of them or on the next `inner_batch` of them in a random order. At test time it adapts on the
    support set, like MAML (with Adam's v as training left it). Takes MAML's other arguments
    (without `first_order`)."""

    def __init__(
        self, model: torch.nn.Module, inner_optimizer: str = "sgd", inner_batch: int = 0, **kwargs
    ) -> None:
        super().__init__(model, first_order=True, **kwargs)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise FewsightError(f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}")
        if inner_batch < 0:
            raise FewsightError("inner_batch must be 0 (all of a task's images) or more")
        self.inner_optimizer, self.inner_batch = inner_optimizer, inner_batch
        if inner_optimizer == "adam":
            named = dict(model.named_parameters())
            for index, name in enumerate(self.adapted):
                self.register_buffer(f"second_moment_{index}", torch.zeros_like(named[name]))
            self.register_buffer("moment_updates", torch.zeros((), dtype=torch.float64))

    def _moments(self) -> list[torch.Tensor]:
        return [getattr(self, f"second_moment_{index}") for index in range(len(self.adapted))]

    def inner_rates(self, step: int) -> dict[str, torch.Tensor | float]:
        """Plain steps of `inner_lr`, or Adam's: `inner_lr` / (√v̂ + ε) for every parameter entry (v̂:
        v with Adam's bias correction); `inner_lr` itself before any meta-step has filled v."""
        if self.inner_optimizer == "sgd":
            return super().inner_rates(step)
        filled = self.moment_updates > 0
        correction = (1 - ADAM_BETA2**self.moment_updates).to(self.second_moment_0.dtype)
        return {
            name: self.inner_lr / torch.where(filled, (moment / correction).sqrt() + ADAM_EPSILON, 1.0)
            for name, moment in zip(self.adapted, self._moments(), strict=True)
        }

    def _update_moments(self, grads: Params, tasks: int) -> None:
        """v after this meta-step's inner steps as the reference's Adam would have it: decayed once per
        inner step of every task, fed with the mean squared gradient of the tasks' first steps."""
        updates = self.steps * tasks
        kept = ADAM_BETA2**updates
        for name, moment in zip(self.adapted, self._moments(), strict=True):
            moment.mul_(kept).add_(grads[name].square().mean(0), alpha=1 - kept)
        self.moment_updates.add_(updates)

    def _mini_batches(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each inner step's images and labels (tasks, steps, batch, ...): all of a task's, or the next
        `inner_batch` of them in a random order of its own (wrapping round to its start)."""
        tasks, count = labels.shape
        if not self.inner_batch:
            shape = (tasks, self.steps, count)
            return images.unsqueeze(1).expand(*shape, *images.shape[2:]), labels.unsqueeze(1).expand(shape)
        if self.inner_batch > count:
            raise FewsightError(f"inner_batch {self.inner_batch} is more than a task's {count} images")
        order = torch.rand(tasks, count, device=labels.device).argsort(dim=1)
        positions = torch.arange(self.steps * self.inner_batch, device=labels.device) % count
        picked = order[:, positions].view(tasks, self.steps, self.inner_batch)
        rows = torch.arange(tasks, device=labels.device).view(tasks, 1, 1)
        return images[rows, picked], labels[rows, picked]

    def _looped_support_loss(
        self, params: Params, images: torch.Tensor, labels: torch.Tensor, step: int
    ) -> Callable[[Params], torch.Tensor]:
        """`batched_support_loss` as a plain loop over tasks: the reference and fallback."""

        def loss(fast: Params) -> torch.Tensor:
            total = torch.zeros((), dtype=images.dtype, device=images.device)
            for task, (x, y) in enumerate(zip(images, labels, strict=True)):
                own = self.step_params(params, {name: value[task] for name, value in fast.items()}, step)
                total = total + F.cross_entropy(self.forward_with(own, x), y)
            return total

        return loss

    def adapted_mean(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """mean_t φ_t for every adapted parameter (no gradient). All tasks step at once through MAML's
        vmapped support loss, its gradient by plain autograd (one transform level, as MAML's own inner
        loop, not vmap over torch.func.grad: docs/BENCHMARKS.md); the loop over tasks is the fallback.
        With Adam, v is updated first, from the first step's gradients."""
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        images = torch.cat([batch.support_x, batch.query_x], dim=1)
        images, labels = self._mini_batches(images, torch.cat([batch.support_y, batch.query_y], dim=1))

        def adapt(support_loss: Callable[..., Callable[[Params], torch.Tensor]]) -> Params:
            fast = {name: params[name].expand(batch.tasks, *params[name].shape) for name in self.adapted}
            rates = None
            for step in range(self.steps):
                fast = {name: value.detach().requires_grad_() for name, value in fast.items()}
                with torch.enable_grad():
                    loss = support_loss(params, images[:, step], labels[:, step], step)(fast)
                    grads = dict(zip(fast, torch.autograd.grad(loss, list(fast.values())), strict=True))
                if step == 0 and self.inner_optimizer == "adam" and self.training:
                    self._update_moments(grads, batch.tasks)
                if rates is None or self.inner_optimizer == "sgd":  # Adam's stay fixed in a meta-step
                    rates = self.inner_rates(step)
                fast = {name: descend(fast[name].detach(), grads[name], rates[name]) for name in fast}
            return fast

        with torch.no_grad():
            adapted = self._with_fallback(
                lambda: adapt(self.batched_support_loss), lambda: adapt(self._looped_support_loss)
            )
        return {name: value.mean(0) for name, value in adapted.items()}

    def check_once(self, batch: TaskBatch) -> None:
        """MAML's self-check, with plain inner steps where Adam's are taken: the two paths run the
        same batching rules either way, but Adam's normalisation turns the rounding noise of a gradient
        that is exactly zero (a bias before a batch norm) into steps of its full size, which the two
        paths round differently."""
        taken = self.inner_optimizer
        self.inner_optimizer = "sgd"
        try:
            super().check_once(batch)
        finally:
            self.inner_optimizer = taken

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
