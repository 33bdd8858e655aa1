"""CUDA graphs: record one whole meta-training step (meta-loss, backward, optimiser step) once, then
replay it. A vmapped MAML step is hundreds of small kernels whose Python dispatch costs more than the
kernels themselves; a replay launches them all at once, with no Python in between."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch
from torch import nn

from fewsight.algorithms import MetaLearner
from fewsight.data.episodes import TaskBatch
from fewsight.training.distributed import average_gradients, world

T = TypeVar("T")


def capture(step: Callable[[], T], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, T]:
    """Record `step`, which must read only tensors that stay in place, as a CUDA graph after `warmup`
    eager runs on a side stream (as PyTorch requires). Returns the graph and the step's outputs, which
    every `graph.replay()` overwrites."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def _wait(outputs: tuple[torch.Tensor, ...]) -> None:
    """Wait until the device has computed `outputs` (a host copy of one number)."""
    outputs[0].item()


def static_copy(batch: TaskBatch) -> TaskBatch:
    """A meta-batch whose tensors a graph reads; `load` refills them in place."""
    return TaskBatch(*(None if t is None else t.clone() for t in _tensors(batch)))


def load(static: TaskBatch, batch: TaskBatch) -> None:
    """Copy a freshly sampled meta-batch into the graph's input tensors."""
    for target, source in zip(_tensors(static), _tensors(batch), strict=True):
        if target is not None:
            target.copy_(source)


def _tensors(batch: TaskBatch) -> tuple[torch.Tensor | None, ...]:
    return (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes)


class GraphedTrainingStep:
    """A meta-training step replayed from a CUDA graph: `step(batch)` returns (loss, accuracy).

    The optimiser must be built with `capturable=True`; its learning rates become device tensors, so
    that `set_learning_rate` reaches the graph. Schedules that only change numbers (the multi-step
    loss weights, the learning rate) are read from tensors the graph reads; when the learner's
    `step_variant()` changes, the step is recorded again. The warm-up runs that capturing needs would
    move the weights, so the learner's and optimiser's tensors are put back before recording: training
    goes on exactly as without the graph. A learner with two paths for a recorded step (MAML:
    `has_replayed_path`) has both recorded and timed the first time, and the faster one is kept; under
    torchrun it keeps the replayed path untimed, so that every process runs the same kernels (timings
    of processes that share a card are noise, and ranks could choose differently).

    Under torchrun every process records its own share of the meta-batch. Collectives are not
    recorded, so there the step is two graphs: the first ends with the process's meta-gradient in
    the parameters' `.grad` tensors, which the all-reduce then averages in place, and the second is
    the optimiser step; the result is the eager data-parallel step's. In one process it is one graph.
    """

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        example: TaskBatch,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        self.learner, self.optimizer, self.autocast = learner, optimizer, autocast
        learner.replayed = True  # the learner may take its path with the faster kernels
        self.path_seconds: dict[bool, float] | None = None  # per path, where `_choose_path` timed them
        device_learning_rates(optimizer)
        self.batch = static_copy(example)
        self._record()

    def _record(self) -> None:
        self.variant = self.learner.step_variant()
        saved = _snapshot(self.learner, self.optimizer)
        try:
            if self.learner.has_replayed_path() and self.path_seconds is None and world()[1] == 1:
                self._choose_path(saved)
            else:
                self._capture()
        finally:
            _restore(saved)

    def _capture(self) -> None:
        """Record the step as it now runs (the previous recording's memory goes back first)."""
        self.graph = self.outputs = self.update = None
        if world()[1] == 1:
            self.graph, self.outputs = capture(self._step)
        else:
            self.graph, self.outputs = capture(self._gradients)
            self.update, _ = capture(self.optimizer.step)

    def _choose_path(self, saved: list[tuple[torch.Tensor, torch.Tensor]], replays: int = 5) -> None:
        """Record each of the learner's paths in turn and time `replays` replays of it; keep the faster.
        Which one that is depends on the shapes (docs/BENCHMARKS.md: MAML's replayed path on Omniglot,
        its eager-style path on miniImageNet); both give the same meta-gradient. The weights are put
        back after each timing."""
        self.path_seconds = {}
        # The replayed path last: the faster on small images (Omniglot), where the set-up weighs most
        # against the training, it is then kept without a second recording.
        for path in (False, True):
            self.learner.replayed = path
            self._capture()
            self._replay()  # the first replay may still be slower
            _wait(self.outputs)
            start = time.perf_counter()
            for _ in range(replays):
                self._replay()
            _wait(self.outputs)
            self.path_seconds[path] = (time.perf_counter() - start) / replays
            _restore(saved)
        faster = min(self.path_seconds, key=self.path_seconds.get)
        if faster != self.learner.replayed:
            self.learner.replayed = faster
            self._capture()

    def _replay(self) -> None:
        self.graph.replay()
        if self.update is not None:  # under torchrun: average between the two replays
            average_gradients(self.learner.parameters())
            self.update.replay()

    def _gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta-gradient of this process's tasks into the `.grad` tensors: (loss, accuracy)."""
        self.optimizer.zero_grad(set_to_none=False)  # in the graph: gradients keep their addresses
        with self.autocast():
            result = self.learner.meta_loss(self.batch)
        result.loss.backward()
        return result.loss.detach(), result.accuracy.detach()

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step in one process: the meta-gradient, then the optimiser step."""
        outputs = self._gradients()
        self.optimizer.step()
        return outputs

    def __call__(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        load(self.batch, batch)
        if self.learner.step_variant() != self.variant:
            self._record()
        self._replay()
        return self.outputs


class GraphedStep:
    """A training step on inputs of fixed shapes replayed from a CUDA graph (pre-training's): `graphed(
    *inputs)` copies the inputs into the tensors the graph reads, replays it and returns the step's
    outputs, which every replay overwrites. As in `GraphedTrainingStep`, the optimiser's learning
    rates become device tensors that `set_learning_rate` reaches, and the weights and optimiser state
    are put back after the warm-up runs that recording needs: training goes on as without the graph.
    The step must not change between replays in anything but tensors (a Python number it reads is
    recorded as it was)."""

    def __init__(
        self,
        step: Callable[..., tuple[torch.Tensor, ...]],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example: tuple[torch.Tensor, ...],
    ) -> None:
        device_learning_rates(optimizer)
        self.inputs = tuple(tensor.clone() for tensor in example)  # in their memory layout
        saved = _snapshot(model, optimizer)
        for parameter in model.parameters():  # as in an eager step: a gradient the step never
            parameter.grad = None  # computes (a metric's temperature) stays none, and SGD skips it
        try:
            self.graph, self.outputs = capture(lambda: step(*self.inputs))
        finally:
            _restore(saved)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for target, source in zip(self.inputs, inputs, strict=True):
            target.copy_(source)
        self.graph.replay()
        return self.outputs


def recorded(record: Callable[[], T], optimizer: torch.optim.Optimizer) -> T | None:
    """`record()`, a step recorded as a CUDA graph, or None, with a warning, for a step that cannot be
    recorded (an operation that waits for the host, say): training then goes on eagerly."""
    try:
        return record()
    except RuntimeError as error:
        if isinstance(error, torch.OutOfMemoryError):
            raise
        warnings.warn(
            f"this step cannot be recorded as a CUDA graph ({str(error).splitlines()[0]}); "
            "training without one (--no-cuda-graphs silences this)",
            stacklevel=3,
        )
        plain_learning_rates(optimizer)
        return None


def device_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Every group's learning rate as a device tensor, which a recorded step reads (in the parameters'
    dtype, so float64 training stays exact; a fused kernel reads its rate in float32 only)."""
    for group in optimizer.param_groups:
        like = group["params"][0]
        dtype = torch.float32 if group.get("fused") else like.dtype
        group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=like.device)


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's learning rate, in place where it is a tensor (as a graphed step's is)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def plain_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Learning rates back to floats, as the eager step needs (a checkpoint of a graphed run holds
    tensors)."""
    for group in optimizer.param_groups:
        group["lr"] = float(group["lr"])


def _snapshot(
    learner: nn.Module, optimizer: torch.optim.Optimizer
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tensor, copy) for every weight, buffer and optimiser state tensor. A fresh optimiser's state
    is created first, by a step with zero gradients, and recorded as zeros (step 0, no moments)."""
    weights = [*learner.parameters(), *learner.buffers()]
    saved = [(t, t.detach().clone()) for t in weights]
    fresh = not optimizer.state
    if fresh:
        for p in learner.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return saved + [(t, torch.zeros_like(t) if fresh else t.detach().clone()) for t in state]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for tensor, copy in saved:
            tensor.copy_(copy)
