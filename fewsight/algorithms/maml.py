"""MAML (Finn et al. 2017) and its first-order form, with the inner loop vectorised over tasks.

Every task adapts a copy of the model's parameters by a few gradient steps on its support set; the
meta-loss is the query loss of the adapted parameters. The inner loop runs for all tasks of a batch
at once (``torch.vmap`` over ``torch.func.grad``), and ``.backward()`` on the meta-loss gives the
second-order meta-gradient (or the first-order one with ``first_order=True``). A plain loop over
tasks with ``torch.autograd.grad`` is kept as the reference, and serves as the fallback for models
that vmap cannot take.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewsight.algorithms.base import MetaLearner
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import with_context

Params = dict[str, torch.Tensor]
T = TypeVar("T")


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
        adapted: which parameter names the inner loop adapts (default: all).
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
    ) -> None:
        super().__init__()
        if steps < 1 or (eval_steps is not None and eval_steps < 1):
            raise FewsightError("inner steps must be at least 1")
        if not transductive and "context_size" not in inspect.signature(model.forward).parameters:
            raise FewsightError(
                "transductive=False needs a model whose forward takes context_size "
                "(fewsight.nets.Conv4 does); use transductive=True for this model"
            )
        self.model = model
        self.inner_lr, self.steps = inner_lr, steps
        self.eval_steps = steps if eval_steps is None else eval_steps
        self.first_order, self.transductive, self.per_task = first_order, transductive, per_task
        names = [name for name, _ in model.named_parameters()]
        self.adapted = names if adapted is None else adapted
        unknown = set(self.adapted) - set(names)
        if unknown:
            raise FewsightError(f"adapted names {sorted(unknown)} are not parameters of the model")

    def inner_rates(self) -> dict[str, torch.Tensor | float]:
        """Step size of each adapted parameter (Meta-SGD learns these)."""
        return dict.fromkeys(self.adapted, self.inner_lr)

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

    def adapt_params(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> Params:
        """All parameters after `steps` inner steps on one task (torch.func.grad: vmap-able)."""
        rates = self.inner_rates()

        def support_loss(fast: Params) -> torch.Tensor:
            return F.cross_entropy(self.forward_with({**params, **fast}, support_x), support_y)

        fast = {name: params[name] for name in self.adapted}
        for _ in range(steps):
            grads = torch.func.grad(support_loss)(fast)
            if self.first_order:
                grads = {name: grad.detach() for name, grad in grads.items()}
            fast = {name: fast[name] - rates[name] * grads[name] for name in fast}
        return {**params, **fast}

    def adapt_params_reference(
        self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
    ) -> Params:
        """The same as `adapt_params`, written with plain autograd: the reference and fallback."""
        rates = self.inner_rates()
        tracking = torch.is_grad_enabled()
        fast = {name: params[name] for name in self.adapted}
        for _ in range(steps):
            if not tracking:
                fast = {name: value.detach().requires_grad_() for name, value in fast.items()}
            with torch.enable_grad():
                logits = self.forward_with({**params, **fast}, support_x)
                loss = F.cross_entropy(logits, support_y)
                grads = torch.autograd.grad(
                    loss, list(fast.values()), create_graph=tracking and not self.first_order
                )
            fast = {name: fast[name] - rates[name] * g for name, g in zip(fast, grads, strict=True)}
        if not tracking:
            fast = {name: value.detach() for name, value in fast.items()}
        return {**params, **fast}

    def _task_logits(
        self,
        adapt: Callable[[Params, torch.Tensor, torch.Tensor, int], Params],
        params: Params,
        steps: int,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
    ) -> torch.Tensor:
        """One task's query logits after adapting with `adapt` (vectorisable or reference)."""
        return self.forward_with(adapt(params, support_x, support_y, steps), query_x, support_x)

    def _with_fallback(self, transformed: Callable[[], T], reference: Callable[[], T]) -> T:
        """Run the torch.func version unless this model needs the plain loop (see `per_task`)."""
        if not self.per_task:
            try:
                result = transformed()
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as error:
                if self.per_task is False:
                    raise
                warnings.warn(
                    f"torch.func cannot take this model ({str(error).splitlines()[0]}); "
                    "falling back to a loop over tasks with plain autograd (slower, same result)",
                    stacklevel=3,
                )
                self.per_task = True
            else:
                self.per_task = False
                return result
        return reference()

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        steps = self._steps()
        inputs = (batch.support_x, batch.support_y, batch.query_x)
        transformed = partial(self._task_logits, self.adapt_params, params, steps)
        vectorised = torch.vmap(transformed, randomness="different")
        reference = partial(self._task_logits, self.adapt_params_reference, params, steps)
        return self._with_fallback(
            lambda: vectorised(*inputs),
            lambda: torch.stack([reference(*(x[t] for x in inputs)) for t in range(batch.tasks)]),
        )

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> AdaptedClassifier:
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        steps = self._steps()
        with torch.no_grad():
            adapted = self._with_fallback(
                lambda: self.adapt_params(params, support_x, support_y, steps),
                lambda: self.adapt_params_reference(params, support_x, support_y, steps),
            )
        return AdaptedClassifier(self, adapted, support_x)
