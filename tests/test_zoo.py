"""A zoo of users' modules: the default (vectorised) meta-gradient of every gradient-based learner
against the plain per-task loop, in float64, on real Omniglot tasks; the loop against finite
differences; and the self-check catching a vectorised path that is wrong."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from torch import nn

import fewsight
from fewsight.data import EpisodeSampler
from fewsight.nets.init import fixed_scales, xavier_weights

WAYS = 5


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the channels of each position, as ConvNeXt uses it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convs with batch norm, a strided 1x1 shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs, track_running_stats=False)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs, track_running_stats=False)
        self.downsample = nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False),
            nn.BatchNorm2d(outputs, track_running_stats=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


def small_cnn(norm: Callable[[int], nn.Module], dropout: float = 0.0) -> nn.Module:
    """Two conv blocks (conv, norm, ReLU, pool) and a linear head, as a user writes one."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        norm(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        norm(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, WAYS),
    )


def tiny_resnet() -> nn.Module:
    """A torchvision-style ResNet at small width: stem, two BasicBlocks, average pool, linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, track_running_stats=False),
        nn.ReLU(),
        BasicBlock(8, 8, 1),
        BasicBlock(8, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, WAYS),
    )


def conv4_as_maml_code() -> nn.Module:
    """fewsight's Conv4 initialised as the MAML paper's code: Xavier weights, batch norm without a
    learned scale."""
    model = fewsight.Conv4(WAYS, hidden=8)
    xavier_weights(model)
    fixed_scales(model)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {
    "no norm": lambda: small_cnn(lambda c: nn.Identity()),
    "BatchNorm2d, no running statistics": lambda: small_cnn(
        lambda c: nn.BatchNorm2d(c, track_running_stats=False)
    ),
    "BatchNorm2d, no affine": lambda: small_cnn(
        lambda c: nn.BatchNorm2d(c, affine=False, track_running_stats=False)
    ),
    "BatchNorm2d in eval mode (running statistics)": lambda: small_cnn(nn.BatchNorm2d).eval(),
    "InstanceNorm2d, affine": lambda: small_cnn(lambda c: nn.InstanceNorm2d(c, affine=True)),
    "InstanceNorm2d": lambda: small_cnn(nn.InstanceNorm2d),
    "LayerNorm over (C, H, W)": lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.LayerNorm([4, 28, 28]),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 28 * 28, WAYS),
    ),
    "LayerNorm over channels": lambda: small_cnn(ChannelsLastLayerNorm),
    "GroupNorm": lambda: small_cnn(lambda c: nn.GroupNorm(2, c)),
    "RMSNorm": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.RMSNorm(8 * 49),
        nn.Linear(8 * 49, WAYS),
    ),
    "LocalResponseNorm": lambda: small_cnn(lambda c: nn.LocalResponseNorm(3)),
    "dropout (p=0: the op, no masks)": lambda: small_cnn(lambda c: nn.GroupNorm(2, c), dropout=0.0),
    "torchvision-style ResNet": tiny_resnet,
    "fewsight Conv4": lambda: fewsight.Conv4(WAYS, hidden=8),
    "fewsight Conv4, scales fixed, Xavier weights": conv4_as_maml_code,
    "fewsight ResNet-12": lambda: fewsight.ResNet12(WAYS, in_channels=1, width=0.0625),
}
LEARNERS: dict[str, Callable[[nn.Module], fewsight.MAML]] = {
    "MAML": lambda m: fewsight.MAML(m, inner_lr=0.4, steps=2),
    "first-order MAML": lambda m: fewsight.MAML(m, inner_lr=0.4, steps=2, first_order=True),
    "Meta-SGD": lambda m: fewsight.MetaSGD(m, inner_lr=0.4, steps=2),
    "ANIL": lambda m: fewsight.ANIL(m, inner_lr=0.4, steps=2),
    "MAML++ switches": lambda m: fewsight.MAML(
        m, inner_lr=0.4, steps=2, multi_step_loss=10, learned_rates=True, per_step_norm=True
    ),
    "Reptile": lambda m: fewsight.Reptile(m, inner_lr=0.1, steps=2),
    "MAML, norms not adapted": lambda m: fewsight.MAML(m, inner_lr=0.4, steps=2, adapt_norm=False),
}
# Every learner on the layers torch got wrong and on fewsight's nets; MAML on the whole zoo.
CASES = (
    [(model, "MAML") for model in MODELS]
    + [
        (model, learner)
        for model in (
            "BatchNorm2d, no running statistics",
            "InstanceNorm2d, affine",
            "LayerNorm over channels",
        )
        for learner in LEARNERS
        if learner != "MAML"
    ]
    + [("fewsight Conv4", learner) for learner in LEARNERS if learner != "MAML"]
)


@pytest.fixture(scope="module")
def tasks(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=WAYS, shots=1, queries=2, dtype=torch.float64)
    return sampler.sample(2, sampler.generator(0))


def meta_gradient(learner: fewsight.MAML, batch) -> torch.Tensor:
    leaves = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(learner.meta_loss(batch).loss, leaves, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(leaves, grads, strict=True)]
    )


def build(model: str, learner: str, **options) -> fewsight.MAML:
    torch.manual_seed(0)
    built = LEARNERS[learner](MODELS[model]().double())
    for name, value in options.items():
        setattr(built, name, value)
    return built


@pytest.mark.parametrize(("model", "learner"), CASES)
def test_the_default_path_vectorises_and_equals_the_per_task_loop(tasks, model, learner):
    default = build(model, learner)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no mismatch: the fast path, and right
        vectorised = meta_gradient(default, tasks)
    assert default.per_task is not True and default.meta_gradient_error < 1e-9
    reference = meta_gradient(build(model, learner, per_task=True), tasks)
    relative = (vectorised - reference).norm() / reference.norm()
    assert relative < 1e-9, f"{model}, {learner}: relative error {relative:.1e}"


REPLAYED = [
    (model, learner, options)
    for model in ("fewsight Conv4", "BatchNorm2d, no running statistics", "fewsight ResNet-12")
    for learner in ("MAML", "first-order MAML", "Meta-SGD", "MAML++ switches", "MAML, norms not adapted")
    for options in ({}, {"checkpoint_inner": True})
]


@pytest.mark.parametrize(("model", "learner", "options"), REPLAYED)
def test_the_path_replayed_from_cuda_graphs_equals_the_per_task_loop(tasks, model, learner, options):
    """A learner recorded as a CUDA graph (`replayed`) takes vmap over torch.func.grad: as exact."""
    replayed = build(model, learner, replayed=True, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectorised = meta_gradient(replayed, tasks)
    assert replayed.per_task is not True and replayed.meta_gradient_error < 1e-9
    eager = meta_gradient(build(model, learner, **options), tasks)
    reference = meta_gradient(build(model, learner, per_task=True), tasks)
    for path in (vectorised, eager):
        relative = (path - reference).norm() / reference.norm()
        assert relative < 1e-9, f"{model}, {learner}, {options}: relative error {relative:.1e}"


@pytest.mark.parametrize("learner", ["MAML", "Meta-SGD", "Reptile"])
def test_running_statistics_in_training_take_the_loop_with_one_line_saying_why(tasks, learner):
    default = build("BatchNorm2d in eval mode (running statistics)", learner)
    default.model.train()  # now every call updates the running statistics in place
    with pytest.warns(UserWarning, match="BatchNorm2d '1' updates running statistics in place"):
        vectorised = meta_gradient(default, tasks)
    assert default.per_task is True
    reference = build("BatchNorm2d in eval mode (running statistics)", learner, per_task=True)
    reference.model.train()
    torch.testing.assert_close(vectorised, meta_gradient(reference, tasks), rtol=1e-9, atol=0)


class Noise(nn.Module):
    """Adds noise in eval mode too: vmap draws it for all tasks at once, the loop task by task, so
    the two paths' meta-gradients differ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


def test_the_self_check_catches_a_vectorised_path_that_differs_and_takes_the_loop(tasks):
    # (torch's fused norm kernels, wrong under vmap(grad(...)), no longer meet a batching rule for
    # their backward: MAML's inner gradient is plain autograd outside its vmap.)
    torch.manual_seed(0)
    noisy = fewsight.MAML(small_cnn(lambda c: Noise()).double(), inner_lr=0.4, steps=2)
    assert fewsight.check_meta_gradient(noisy, tasks) > 1e-6
    with pytest.warns(UserWarning, match=r"differs from the per-task loop's by .* trains with the loop"):
        guarded = meta_gradient(noisy, tasks)
    assert noisy.per_task is True
    torch.manual_seed(0)
    reference = fewsight.MAML(small_cnn(lambda c: Noise()).double(), inner_lr=0.4, steps=2, per_task=True)
    torch.testing.assert_close(guarded, meta_gradient(reference, tasks), rtol=1e-9, atol=0)


def test_the_self_check_compares_in_float64_under_autocast(tasks):
    learner = build("BatchNorm2d, no running statistics", "MAML")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fewsight.check_meta_gradient(learner, tasks) < 1e-9


class SearchFlag(nn.Module):
    """Records whether cuDNN's kernel search is on when it runs (in the class: the self-check runs
    deep copies of the model)."""

    seen: ClassVar[list[bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SearchFlag.seen.append(torch.backends.cudnn.benchmark)
        return x


def test_the_self_check_runs_without_kernel_search_and_puts_it_back(tasks, monkeypatch):
    """Its float64 shapes come once: searching kernels for them would only lengthen the first step."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(SearchFlag, "seen", [])
    learner = fewsight.MAML(small_cnn(lambda c: SearchFlag()).double(), inner_lr=0.4, steps=1)
    assert fewsight.check_meta_gradient(learner, tasks) < 1e-9
    assert SearchFlag.seen and not any(SearchFlag.seen) and torch.backends.cudnn.benchmark


def test_the_self_check_leaves_the_random_state_and_can_be_switched_off(tasks):
    learner = build("BatchNorm2d, no running statistics", "MAML")
    state = torch.random.get_rng_state()
    fewsight.check_meta_gradient(learner, tasks)
    assert torch.equal(state, torch.random.get_rng_state())
    unchecked = build("BatchNorm2d, no running statistics", "MAML", self_check=False)
    meta_gradient(unchecked, tasks)
    assert unchecked.meta_gradient_error is None


@pytest.mark.parametrize(
    "model", ["BatchNorm2d, no running statistics", "InstanceNorm2d, affine", "fewsight Conv4"]
)
def test_the_per_task_loop_agrees_with_finite_differences(tasks, model):
    learner = build(model, "MAML", per_task=True)
    leaves = [p for p in learner.parameters() if p.requires_grad]
    gradient = meta_gradient(learner, tasks)
    direction = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    epsilon = 1e-7

    def loss_at(shift: float) -> float:
        with torch.no_grad():
            offset = 0
            for p in leaves:
                p.add_(shift * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        value = learner.meta_loss(tasks).loss.item()
        with torch.no_grad():
            offset = 0
            for p in leaves:
                p.sub_(shift * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        return value

    finite = (loss_at(epsilon) - loss_at(-epsilon)) / (2 * epsilon)
    analytic = float(gradient @ direction)
    assert abs(finite - analytic) / abs(analytic) < 1e-6, (finite, analytic)


def test_the_inner_loop_leaves_out_norms_without_adapt_norm_and_frozen_scales_always(tasks):
    from fewsight.nets.written_out import norm_parameters

    model = conv4_as_maml_code().double()
    norms = norm_parameters(model)
    scales = [name for name in norms if name.endswith("weight")]
    assert len(norms) == 8 and all(not model.get_parameter(name).requires_grad for name in scales)
    assert set(fewsight.MAML(model).adapted) == {n for n, _ in model.named_parameters()} - set(scales)
    assert not set(fewsight.MAML(model, adapt_norm=False).adapted) & set(norms)
    learner = fewsight.MAML(model, inner_lr=0.4, steps=2, adapt_norm=False)
    fast = learner.adapt_params(dict(model.named_parameters()), tasks.support_x[0], tasks.support_y[0], 2)
    assert all(torch.equal(fast[name], model.get_parameter(name)) for name in norms if name in fast)
    assert any(not torch.equal(fast[name], model.get_parameter(name)) for name in fast)
