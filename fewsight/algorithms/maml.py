"""MAML (Finn et al. 2017) and its first-order form, with the inner loop vectorised over tasks.

Every task adapts a copy of the model's parameters by a few gradient steps on its support set; the
meta-loss is the query loss of the adapted parameters. The inner loop runs for all tasks of a batch
at once (the support losses under ``torch.vmap``, the gradient of their sum by plain autograd), and
``.backward()`` on the meta-loss gives the second-order meta-gradient (or the first-order one with
``first_order=True``). A plain loop over tasks with ``torch.autograd.grad`` is kept as the reference,
and serves as the fallback for models that vmap cannot take.

MAML++'s improvements (Antoniou et al. 2019) are switches on the same class: the multi-step loss,
learned per-layer per-step inner learning rates, per-step batch-norm weights and biases, and
derivative-order annealing; and two memory levers: tasks in chunks and a recomputed inner loop.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewsight.algorithms.base import MetaLearner, MetaLoss
from fewsight.algorithms.multistep import multi_step_weights
from fewsight.algorithms.recompute import recompute
from fewsight.algorithms.selfcheck import TOLERANCE as SELF_CHECK_TOLERANCE
from fewsight.algorithms.selfcheck import check_meta_gradient
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import TaskBatchNorm, with_context
from fewsight.nets.written_out import (
    WrittenOutNorms,
    calls_torch_norms,
    norm_parameters,
    running_statistics_layers,
)

Params = dict[str, torch.Tensor]
Step = Callable[[Params, torch.Tensor, torch.Tensor, int], Params]  # one inner step: fast -> fast
T = TypeVar("T")


def descend(value: torch.Tensor, grad: torch.Tensor, rate: torch.Tensor | float) -> torch.Tensor:
    """value - rate * grad as one kernel (rate: a float, or a tensor that broadcasts to value)."""
    if torch.is_tensor(rate):
        return torch.addcmul(value, rate, grad, value=-1)
    return torch.add(value, grad, alpha=-rate)


class AdaptedClassifier(nn.Module):
    """A model with task-specific parameters: images (B, C, H, W) -> logits (B, N).

    In non-transductive mode it keeps the support images, whose statistics normalise the queries.
    """

    def __init__(self, learner: MAML, params: Params, support_x: torch.Tensor) -> None:
        super().__init__()
        self.learner, self.params, self.support_x = learner, params, support_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.forward_with(self.params, x, self.support_x)


class MAML(MetaLearner):
    """Model-agnostic meta-learning over any `nn.Module` that maps images to logits (B, N).

    Args:
        model: the network whose parameters are meta-learned; its output size is the way count.
        inner_lr: step size of the inner gradient steps.
        steps: inner steps during meta-training; `eval_steps` (default: the same) in `.eval()` mode.
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        transductive: normalise queries with their own batch statistics (as in the MAML paper); if
            False, with the support set's, which needs a model whose forward takes `context_size`.
        per_task: True loops over tasks; False forces vmap; None (default) tries vmap and falls
            back to the loop, with a warning, for a model that vmap cannot take.
        adapted: which parameter names the inner loop adapts (default: all that require grad).
        adapt_norm: False leaves the norm layers' scales and shifts out of the inner loop: meta-learned
            only, as in the MAML paper's code (its batch norm lies outside the adapted weights).
        multi_step_loss: MAML++'s multi-step loss: the query loss after every inner step, weighted,
            the weights annealed towards the last step over this many meta-steps, then the last
            step's loss alone, as MAML++'s code (0: off).
        learned_rates: MAML++'s learned step size per adapted tensor and per inner step.
        per_step_norm: MAML++'s per-step batch norm: a scale and shift of every TaskBatchNorm for
            each inner step (step 0 uses the model's own), meta-learned, not adapted.
        first_order_steps: derivative-order annealing: first order for this many meta-steps.
        task_chunk: memory lever: meta-gradient of this many tasks at a time (0: all at once).
        checkpoint_inner: memory lever: recompute each inner step in the backward pass.
        self_check: on the first meta-gradient, compare the vectorised path with the per-task loop
            in float64 on a copy (`fewsight.check_meta_gradient`), and take the loop, with a
            warning, if they differ; `meta_gradient_error` then holds the difference.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        steps: int = 1,
        eval_steps: int | None = None,
        first_order: bool = False,
        transductive: bool = True,
        per_task: bool | None = None,
        adapted: list[str] | None = None,
        adapt_norm: bool = True,
        multi_step_loss: int = 0,
        learned_rates: bool = False,
        per_step_norm: bool = False,
        first_order_steps: int = 0,
        task_chunk: int = 0,
        checkpoint_inner: bool = False,
        self_check: bool = True,
    ) -> None:
        super().__init__()
        if steps < 1 or (eval_steps is not None and eval_steps < 1):
            raise FewsightError("inner steps must be at least 1")
        if min(multi_step_loss, first_order_steps, task_chunk) < 0:
            raise FewsightError("multi_step_loss, first_order_steps and task_chunk must be 0 or more")
        if not transductive and "context_size" not in inspect.signature(model.forward).parameters:
            raise FewsightError(
                "transductive=False needs a model whose forward takes context_size "
                "(fewsight.nets.Conv4 does); use transductive=True for this model"
            )
        self.model = model
        self.inner_lr, self.steps = inner_lr, steps
        self.eval_steps = steps if eval_steps is None else eval_steps
        self.first_order, self.transductive, self.per_task = first_order, transductive, per_task
        self.multi_step_loss, self.first_order_steps = multi_step_loss, first_order_steps
        self.task_chunk, self.checkpoint_inner = task_chunk, checkpoint_inner
        self.self_check, self.meta_gradient_error = self_check, None
        # torch's own norm layers (or a user's module that may call them) run written out under vmap.
        self.rewrite_norms = calls_torch_norms(model)
        self.meta_step = 0  # set by `schedule`; drives the multi-step loss and derivative order
        named = dict(model.named_parameters())
        self.norms = (
            [
                f"{name}.{part}"
                for name, m in model.named_modules()
                if isinstance(m, TaskBatchNorm)
                for part in ("weight", "bias")
            ]
            if per_step_norm
            else []
        )
        # Not adapted: per-step norms, all norms without adapt_norm, and frozen parameters.
        kept = {*self.norms, *([] if adapt_norm else norm_parameters(model))}
        kept |= {name for name, p in named.items() if not p.requires_grad}
        self.adapted = [name for name in (named if adapted is None else adapted) if name not in kept]
        unknown = set(self.adapted) - set(named)
        if unknown:
            raise FewsightError(f"adapted names {sorted(unknown)} are not parameters of the model")
        self.step_rates = (
            nn.ParameterList(
                nn.Parameter(torch.full((steps,), inner_lr, dtype=named[name].dtype)) for name in self.adapted
            )
            if learned_rates
            else None
        )
        self.step_norms = nn.ParameterList(
            nn.Parameter(named[name].detach().clone().expand(steps - 1, -1).clone()) for name in self.norms
        )
        # The multi-step loss weights of the current meta-step, kept on the device and refilled in
        # place by `schedule`, so that a recorded CUDA graph reads each step's weights.
        self.register_buffer("loss_weights", self._scheduled_weights(), persistent=False)

    def _scheduled_weights(self) -> torch.Tensor:
        return torch.tensor(multi_step_weights(self.steps, self.meta_step, max(self.multi_step_loss, 1)))

    def schedule(self, step: int) -> None:
        self.meta_step = step - 1  # meta-steps already taken: 0 for the first
        if self.multi_step_loss:
            self.loss_weights.copy_(self._scheduled_weights())

    def step_variant(self) -> tuple:
        return (self._first_order(), self._multi_step())

    def inner_rates(self, step: int) -> dict[str, torch.Tensor | float]:
        """Step size of each adapted parameter at inner step `step` (MetaSGD and LSLR learn these)."""
        if self.step_rates is None:
            return dict.fromkeys(self.adapted, self.inner_lr)
        index = min(step, self.steps - 1)  # extra test-time steps reuse the last step's rate
        return {name: rates[index] for name, rates in zip(self.adapted, self.step_rates, strict=True)}

    def step_params(self, params: Params, fast: Params, step: int) -> Params:
        """All parameters for inner step `step`: `fast` adapted ones, that step's norms, the rest."""
        index = min(step, self.steps - 1)
        norms = (
            {} if index == 0 else {n: p[index - 1] for n, p in zip(self.norms, self.step_norms, strict=True)}
        )
        return {**params, **norms, **fast}

    def _first_order(self) -> bool:
        return self.first_order or (self.training and self.meta_step < self.first_order_steps)

    def forward_with(
        self, params: Params, x: torch.Tensor, support_x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of x under `params`; non-transductive models normalise x with support_x's stats."""
        context = None if self.transductive else support_x
        return with_context(
            lambda inputs, **kw: functional_call(self.model, params, (inputs,), kw), x, context
        )

    def _steps(self) -> int:
        return self.steps if self.training else self.eval_steps

    def inner_step(
        self, params: Params, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int
    ) -> Params:
        """One task's adapted parameters after inner step `step` (torch.func.grad: vmap-able)."""

        def support_loss(fast: Params) -> torch.Tensor:
            logits = self.forward_with(self.step_params(params, fast, step), support_x)
            return F.cross_entropy(logits, support_y)

        grads = torch.func.grad(support_loss)(fast)
        if self._first_order():
            grads = {name: grad.detach() for name, grad in grads.items()}
        rates = self.inner_rates(step)
        return {name: descend(fast[name], grads[name], rates[name]) for name in fast}

    def inner_step_reference(
        self, params: Params, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int
    ) -> Params:
        """The same as `inner_step`, written with plain autograd: the reference and fallback."""

        def support_loss(fast: Params) -> torch.Tensor:
            logits = self.forward_with(self.step_params(params, fast, step), support_x)
            return F.cross_entropy(logits, support_y)

        return self._autograd_step(fast, support_loss, step)

    def batched_inner_step(
        self, params: Params, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int
    ) -> Params:
        """`inner_step` for all tasks at once (`fast` and the support sets with the tasks first): the
        support losses vmapped over tasks, their gradient taken by plain autograd on their sum, which
        is every task's own gradient, as a task's loss depends on its own parameters alone.

        One transform level (vmap) instead of two (vmap over torch.func.grad): the inner backward runs
        under plain autograd, so fewsight's layers take their plain backward there (fused batch norm
        and pool kernels, torch's double backward of them) instead of torch.func's Python around every
        custom autograd Function call, about twice as fast on the CPU (docs/BENCHMARKS.md).
        """
        return self._autograd_step(fast, self.batched_support_loss(params, support_x, support_y, step), step)

    def batched_support_loss(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, step: int
    ) -> Callable[[Params], torch.Tensor]:
        """The support losses of all tasks (tasks first) at inner step `step`, vmapped and summed, as a
        function of their adapted parameters; its gradient is every task's own."""

        def task_loss(fast: Params, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
            logits = self.forward_with(self.step_params(params, fast, step), support_x)
            return F.cross_entropy(logits, support_y)

        return lambda fast: torch.vmap(task_loss, randomness="different")(fast, support_x, support_y).sum()

    def _autograd_step(self, fast: Params, loss: Callable[[Params], torch.Tensor], step: int) -> Params:
        """`fast` after inner step `step` down the plain-autograd gradient of `loss(fast)`; with the
        graph of that gradient kept for the meta-gradient where grad mode is on (second order)."""
        tracking = torch.is_grad_enabled()
        if not tracking:
            fast = {name: value.detach().requires_grad_() for name, value in fast.items()}
        with torch.enable_grad():
            grads = torch.autograd.grad(
                loss(fast), list(fast.values()), create_graph=tracking and not self._first_order()
            )
        rates = self.inner_rates(step)
        fast = {name: descend(fast[name], g, rates[name]) for name, g in zip(fast, grads, strict=True)}
        return fast if tracking else {name: value.detach() for name, value in fast.items()}

    def trajectory(
        self, inner_step: Step, fast: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> list[Params]:
        """The adapted parameters after each of `steps` inner steps, each step recomputed in the
        backward pass with `checkpoint_inner` (which cannot work inside vmap: see `_batched_logits`)."""
        leaves = [p for p in self.parameters() if p.requires_grad]
        recomputing = self.checkpoint_inner and torch.is_grad_enabled() and bool(leaves)
        names = list(fast)

        def run(step: int, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(
                inner_step(dict(zip(names, values, strict=True)), support_x, support_y, step).values()
            )

        after = []
        for step in range(steps):
            if recomputing:
                fast = dict(
                    zip(names, recompute(partial(run, step), list(fast.values()), leaves), strict=True)
                )
            else:
                fast = inner_step(fast, support_x, support_y, step)
            after.append(fast)
        return after

    def adapt_params(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> Params:
        """All parameters after `steps` inner steps on one task (torch.func.grad: vmap-able)."""
        fast = {name: params[name] for name in self.adapted}
        last = self.trajectory(partial(self.inner_step, params), fast, support_x, support_y, steps)[-1]
        return self.step_params(params, last, steps - 1)

    def adapt_params_reference(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> Params:
        """The same as `adapt_params`, written with plain autograd: the reference and fallback."""
        fast = {name: params[name] for name in self.adapted}
        step = partial(self.inner_step_reference, params)
        return self.step_params(
            params, self.trajectory(step, fast, support_x, support_y, steps)[-1], steps - 1
        )

    def _task_logits(
        self,
        inner_step: Step,
        params: Params,
        steps: int,
        every_step: bool,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
    ) -> torch.Tensor:
        """Query logits (K, N*Q, N) of one task after each inner step (K = steps), or after the last
        (K = 1), adapting with `inner_step` (vmap-able) or `inner_step_reference` (the per-task loop's)."""
        fast = {name: params[name] for name in self.adapted}
        after = self.trajectory(partial(inner_step, params), fast, support_x, support_y, steps)
        kept = range(steps) if every_step else [steps - 1]
        return torch.stack(
            [self.forward_with(self.step_params(params, after[k], k), query_x, support_x) for k in kept]
        )

    def _batched_logits(self, params: Params, steps: int, every_step: bool, batch: TaskBatch) -> torch.Tensor:
        """`_task_logits` for all tasks, each inner step a `batched_inner_step` (vmap inside, plain
        autograd outside, which `checkpoint_inner` can recompute), the query logits vmapped."""
        fast = {name: params[name].expand(batch.tasks, *params[name].shape) for name in self.adapted}
        inner_step = partial(self.batched_inner_step, params)
        after = self.trajectory(inner_step, fast, batch.support_x, batch.support_y, steps)
        kept = range(steps) if every_step else [steps - 1]

        def logits(k: int) -> torch.Tensor:
            one = lambda fast, query_x, support_x: self.forward_with(  # noqa: E731
                self.step_params(params, fast, k), query_x, support_x
            )
            return torch.vmap(one, randomness="different")(after[k], batch.query_x, batch.support_x)

        return torch.stack([logits(k) for k in kept], dim=1)

    def _with_fallback(self, transformed: Callable[[], T], reference: Callable[[], T]) -> T:
        """Run the torch.func version unless this model needs the plain loop (see `per_task`)."""
        if not self.per_task:
            try:
                with WrittenOutNorms() if self.rewrite_norms else nullcontext():
                    result = transformed()
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as error:
                if self.per_task is False:
                    raise
                tracking = running_statistics_layers(self.model)
                reason = (
                    f"{tracking[0]} updates running statistics in place, which cannot run for all "
                    "tasks at once; track_running_stats=False or fewsight.replace_batchnorm avoids it"
                    if tracking
                    else str(error).splitlines()[0]
                )
                warnings.warn(
                    f"torch.func cannot take this model ({reason}); "
                    "falling back to a loop over tasks with plain autograd (slower, same result)",
                    stacklevel=3,
                )
                self.per_task = True
            else:
                self.per_task = False
                return result
        return reference()

    def check_once(self, batch: TaskBatch) -> None:
        """The self-check, before the first vectorised meta-gradient (see `self_check`)."""
        if not self.self_check or self.per_task is not None or self.meta_gradient_error is not None:
            return
        if not torch.is_grad_enabled():
            return
        try:
            self.meta_gradient_error = check_meta_gradient(self, batch)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            return  # torch.func cannot take the model: the first call falls back, with its warning
        if self.meta_gradient_error > SELF_CHECK_TOLERANCE:
            warnings.warn(
                f"the vectorised meta-gradient of this model differs from the per-task loop's by "
                f"{self.meta_gradient_error:.1e} (relative, float64), so it trains with the loop over "
                "tasks (slower, right); a model that draws random numbers of its own in eval mode "
                "can pass self_check=False",
                stacklevel=3,
            )
            self.per_task = True

    def has_replayed_path(self) -> bool:
        return not self.checkpoint_inner  # with it, the replayed path is never taken (step_logits)

    def step_logits(self, batch: TaskBatch, every_step: bool) -> torch.Tensor:
        """Query logits (T, K, N*Q, N) after every inner step (K = steps) or after the last (K = 1)."""
        params = dict(self.model.named_parameters())
        steps = self._steps()
        inputs = (batch.support_x, batch.support_y, batch.query_x)
        if self.replayed and not (self.checkpoint_inner and torch.is_grad_enabled()):
            # Replayed from a CUDA graph: vmap over torch.func.grad, two transform levels, whose
            # kernels run faster on the GPU for some shapes (Omniglot, docs/BENCHMARKS.md; the
            # recording times both paths); eagerly, one level runs less Python.
            # Not with checkpoint_inner: its recomputation would run torch's norms outside
            # WrittenOutNorms, under torch.func.grad, where their meta-gradient is wrong.
            task = partial(self._task_logits, self.inner_step, params, steps, every_step)
            transformed = partial(torch.vmap(task, randomness="different"), *inputs)
        else:
            transformed = partial(self._batched_logits, params, steps, every_step, batch)
        reference = partial(self._task_logits, self.inner_step_reference, params, steps, every_step)
        return self._with_fallback(
            transformed,
            lambda: torch.stack([reference(*(x[t] for x in inputs)) for t in range(batch.tasks)]),
        )

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        return self.step_logits(batch, every_step=False)[:, -1]

    def _multi_step(self) -> bool:
        """Whether the meta-loss weighs the query losses after every inner step: while training, over
        the first `multi_step_loss` meta-steps only; after them the last step's loss alone counts, and
        the other query passes are not run (MAML++'s code stops computing them after its annealing)."""
        return self.training and self.steps > 1 and self.meta_step < self.multi_step_loss

    def meta_loss(self, batch: TaskBatch) -> MetaLoss:
        """The query loss (after every inner step, weighted, with the multi-step loss), `task_chunk`
        tasks at a time if set: each chunk's meta-gradient is taken at once and its graph freed."""
        self.check_once(batch)
        chunk = self.task_chunk
        if not chunk or chunk >= batch.tasks or not torch.is_grad_enabled():
            return self._weighted_loss(batch)
        leaves = [p for p in self.parameters() if p.requires_grad]
        loss = accuracy = torch.zeros((), device=batch.query_x.device)
        sums: list[torch.Tensor | None] = [None] * len(leaves)
        for start in range(0, batch.tasks, chunk):
            part = batch.tasks_between(start, min(start + chunk, batch.tasks))
            result = self._weighted_loss(part)
            share = part.tasks / batch.tasks
            grads = torch.autograd.grad(result.loss * share, leaves, allow_unused=True)
            sums = [s if g is None else g if s is None else s + g for s, g in zip(sums, grads, strict=True)]
            loss = loss + result.loss.detach() * share
            accuracy = accuracy + result.accuracy * share
        # A stand-in whose value is the loss and whose gradient is the summed meta-gradient.
        pull = sum((p * g).sum() for p, g in zip(leaves, sums, strict=True) if g is not None)
        return MetaLoss(loss + pull - pull.detach(), accuracy)

    def _weighted_loss(self, batch: TaskBatch) -> MetaLoss:
        if not self._multi_step():
            return self._loss_and_accuracy(self.query_logits(batch), batch)
        logits = self.step_logits(batch, every_step=True)
        losses = torch.stack([self._loss_and_accuracy(logits[:, k], batch).loss for k in range(self.steps)])
        last = self._loss_and_accuracy(logits[:, -1], batch)
        return MetaLoss((self.loss_weights.to(losses.dtype) * losses).sum(), last.accuracy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> AdaptedClassifier:
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        steps = self._steps()
        with torch.no_grad():
            adapted = self._with_fallback(
                lambda: self.adapt_params(params, support_x, support_y, steps),
                lambda: self.adapt_params_reference(params, support_x, support_y, steps),
            )
        return AdaptedClassifier(self, adapted, support_x)
