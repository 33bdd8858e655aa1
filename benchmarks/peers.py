"""fewsight's second-order MAML meta-step written with each peer library, as its docs show it.

Every peer loops over the tasks of a batch with its own inner-loop machinery (learn2learn's
``MAML.clone()/adapt()``, higher's ``innerloop_ctx``, TorchOpt's ``MetaSGD``) on a plain-torch twin
of the fewsight model: the same weights, with torch's own layers in place of fewsight's (torch's
batch norm with batch statistics and no running state, as fewsight's transductive norm; nn.Conv2d;
torch's max-pool and ReLU), so that the peers run as their users would. Each step backpropagates the
query loss of every task divided by the task count, as ``MAML.meta_loss`` averages it, and returns
the meta-gradient by parameter name, so that fewsight.training.bench checks it against fewsight's before
timing it (benchmarks/run.py picks up `implementations`).
The peers are an optional extra (``pip install fewsight[peers]``); see benchmarks/README.md.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms import MAML
from fewsight.data.episodes import TaskBatch
from fewsight.nets.batchnorm import TaskBatchNorm
from fewsight.nets.conv import SameConv2d
from fewsight.nets.conv4 import ConvBlock
from fewsight.training.bench import Case, Implementation

Grads = dict[str, torch.Tensor]
Loss = Callable[[nn.Module], torch.Tensor]
Adapt = Callable[[Loss], AbstractContextManager[nn.Module]]
PEERS = ("learn2learn", "higher", "torchopt")


class TorchBatchNorm(nn.BatchNorm2d):
    """torch's batch norm with batch statistics only, called as fewsight's blocks call their norm."""

    def forward(self, x: torch.Tensor, context_size: int | None = None) -> torch.Tensor:
        if context_size is not None:
            raise ValueError("the peers run transductive MAML only")
        return super().forward(x)


class TorchConvBlock(ConvBlock):
    """Conv4's block with torch's own max-pool and ReLU (fewsight's block pools with its own function)."""

    def forward(self, x: torch.Tensor, context_size: int | None = None, film=None) -> torch.Tensor:
        return F.relu(F.max_pool2d(self.norm(self.conv(x), context_size), 2))


def torch_twin(model: nn.Module) -> nn.Module:
    """A copy of a fewsight model with torch's layers in place of fewsight's, same weights."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if type(module) is ConvBlock:
            module.__class__ = TorchConvBlock  # the same submodules and weights; torch's pooling
        for name, child in list(module.named_children()):
            if isinstance(child, TaskBatchNorm):
                layer = TorchBatchNorm(child.weight.shape[0], child.eps, track_running_stats=False)
            elif isinstance(child, SameConv2d):
                layer = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    padding=child.padding,
                    bias=child.bias is not None,
                )
            else:
                continue
            layer.to(child.weight)
            layer.load_state_dict(child.state_dict())
            setattr(module, name, layer)
    return model


def available_peers() -> list[str]:
    """The peers installed here."""
    return [name for name in PEERS if importlib.util.find_spec(name) is not None]


def implementations(case: Case) -> dict[str, Implementation]:
    """The installed peers' meta-steps for a second-order MAML case of fewsight's benchmark suite."""
    if case.algorithm != "maml":
        return {}
    return {name: partial(make_peer_step, name) for name in available_peers()}


def learn2learn_adapter(model: nn.Module, inner_lr: float, steps: int) -> Adapt:
    """learn2learn: ``l2l.algorithms.MAML(model, lr, first_order=False)``, ``clone()``, ``adapt()``."""
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=False)

    @contextmanager
    def adapt(support: Loss) -> Iterator[nn.Module]:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(support(learner))
        yield learner

    return adapt


def higher_adapter(model: nn.Module, inner_lr: float, steps: int) -> Adapt:
    """higher: ``innerloop_ctx`` with SGD, gradients flowing to the initial weights."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)

    @contextmanager
    def adapt(support: Loss) -> Iterator[nn.Module]:
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(support(fmodel))
            yield fmodel

    return adapt


def torchopt_adapter(model: nn.Module, inner_lr: float, steps: int) -> Adapt:
    """TorchOpt: ``MetaSGD`` steps on the module itself, whose initial state is restored after each task."""
    import torchopt

    inner_opt = torchopt.MetaSGD(model, lr=inner_lr)
    model_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner_opt)

    @contextmanager
    def adapt(support: Loss) -> Iterator[nn.Module]:
        for _ in range(steps):
            inner_opt.step(support(model))
        yield model
        torchopt.recover_state_dict(model, model_state)
        torchopt.recover_state_dict(inner_opt, opt_state)

    return adapt


ADAPTERS = {"learn2learn": learn2learn_adapter, "higher": higher_adapter, "torchopt": torchopt_adapter}


def peer_trainer(name: str, learner: MAML) -> tuple[nn.Module, Callable[[TaskBatch], None]]:
    """Peer `name`'s twin of `learner.model` and a call that adds its meta-gradient on a meta-batch.

    The twin has the learner's weights, device and dtype; the call backpropagates the query loss of
    every task of the batch divided by the task count into the twin's `.grad`s, which it does not
    clear, as a training loop with an optimiser over the twin's parameters wants.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown peer {name!r}: choose from {', '.join(PEERS)}")
    if type(learner) is not MAML or learner.first_order or not learner.transductive:
        raise ValueError("the peers run plain second-order transductive MAML only")
    if learner.adapted != [n for n, _ in learner.model.named_parameters()]:
        raise ValueError("the peers adapt every parameter, as MAML does by default")
    # Only the model's parameters are meta-learned (no learned rates), under the prefix "model.".
    model = torch_twin(learner.model).train()
    adapter = ADAPTERS[name](model, learner.inner_lr, learner.steps)

    def backward(batch: TaskBatch) -> None:
        tasks = batch.tasks
        for t in range(tasks):

            def support(module: nn.Module, t: int = t) -> torch.Tensor:
                return F.cross_entropy(module(batch.support_x[t]), batch.support_y[t])

            with adapter(support) as adapted:
                query_loss = F.cross_entropy(adapted(batch.query_x[t]), batch.query_y[t])
                (query_loss / tasks).backward()

    return model, backward


def make_peer_step(name: str, learner: MAML, batch: TaskBatch) -> Callable[[], Grads]:
    """One meta-step of `learner`'s MAML on `batch` with peer `name`: call it for the meta-gradient.

    The peer works on its own twin of `learner.model` (see `peer_trainer`); the step clears and
    refills the twin's gradients, and returns them under the learner's parameter names
    (``model.blocks.0.conv.weight``...), as fewsight.training.bench's implementations do.
    """
    model, backward = peer_trainer(name, learner)
    params = dict(model.named_parameters())

    def step() -> Grads:
        for p in params.values():
            p.grad = None
        backward(batch)
        return {f"model.{n}": p.grad for n, p in params.items()}

    return step
