from functools import partial

import pytest
import torch
import torch.nn.functional as F

from fewsight.nets import Conv4, TaskBatchNorm, same_conv2d
from fewsight.nets.batchnorm import batch_norm
from fewsight.nets.conv import conv_per_task
from fewsight.nets.pooling import _PoolReLU, leaky_relu_pool, max_pool2_with_indices, pool_relu


def test_conv4_shapes():
    assert Conv4(5)(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    wide = Conv4(20, in_channels=3, hidden=32, image_size=84)
    assert wide.feature_size == 800
    assert wide(torch.rand(2, 3, 84, 84)).shape == (2, 20)


def test_fused_and_written_out_batch_norm_agree_to_second_order():
    """Without context_size the fused kernel runs (with a written-out backward when a graph of it is
    wanted); with it, the written-out form. In float64 both give the same outputs, gradients and second
    derivatives."""
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    norm = TaskBatchNorm(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()

    def derivatives(written_out: bool) -> tuple[torch.Tensor, ...]:
        y = norm(x, context_size=len(x)) if written_out else norm(x)
        (gradient,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
        return y, gradient, *torch.autograd.grad(gradient.pow(2).sum(), [x, norm.weight, norm.bias])

    for written, fused in zip(derivatives(True), derivatives(False), strict=True):
        torch.testing.assert_close(written, fused, rtol=1e-10, atol=1e-10)
    vmapped = torch.func.vmap(norm)(x.detach().expand(3, *x.shape))
    torch.testing.assert_close(vmapped, norm(x).detach().expand(3, *x.shape))


def test_context_size_normalises_with_the_first_samples_only():
    norm = TaskBatchNorm(2).double()
    support, queries = torch.randn(4, 2, 3, 3).double(), torch.randn(5, 2, 3, 3).double()
    joint = norm(torch.cat([support, queries]), context_size=4)
    torch.testing.assert_close(joint[:4], norm(support))
    # Each query's output depends on the support set and itself alone.
    alone = norm(torch.cat([support, queries[:1]]), context_size=4)[4:]
    torch.testing.assert_close(joint[4:5], alone)


def written_out_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    variance, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
    return (x - mean) / torch.sqrt(variance + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def second_order(norm, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """An inner-loop-like quantity: the squared gradient of a loss in the scale, per task."""
    grad = torch.func.grad(lambda w: norm(x, w, bias).sin().sum())(weight)
    return grad.pow(2).sum()


def test_batch_norm_under_vmap_folds_tasks_and_keeps_second_derivatives():
    """vmap(grad(...)) of the fused batch norm (tasks folded into channels) against a loop over tasks
    of the written-out form: the same values and second-order derivatives, in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, 5, 5, dtype=torch.float64, generator=generator)
    weight = torch.rand(3, 4, dtype=torch.float64, generator=generator).add(0.5).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, generator=generator).requires_grad_()  # shared by tasks
    outputs = torch.vmap(batch_norm, in_dims=(0, 0, None))(x, weight, bias)
    loop = torch.stack([written_out_batch_norm(x[t], weight[t], bias) for t in range(3)])
    torch.testing.assert_close(outputs, loop)
    vmapped = torch.vmap(lambda x, w: second_order(batch_norm, x, w, bias))(x, weight).sum()
    looped = sum(second_order(written_out_batch_norm, x[t], weight[t], bias) for t in range(3))
    for a, b in zip(
        torch.autograd.grad(vmapped, [weight, bias]), torch.autograd.grad(looped, [weight, bias]), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("kernel", "groups", "with_bias"), [(3, 1, True), (3, 2, False), (1, 2, True)])
def test_same_conv_second_derivatives_are_torchs(kernel: int, groups: int, with_bias: bool):
    """same_conv2d equals F.conv2d with padding k // 2, and its first and second derivatives pass
    torch's numerical checks (gradcheck, gradgradcheck) in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(6, 4 // groups, kernel, kernel, dtype=torch.float64, generator=generator)
    bias = torch.randn(6, dtype=torch.float64, generator=generator) if with_bias else None
    inputs = (x, weight.requires_grad_(), *([bias.requires_grad_()] if with_bias else []))

    def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return same_conv2d(x, weight, bias, groups)

    expected = F.conv2d(x, weight, bias, padding=kernel // 2, groups=groups)
    torch.testing.assert_close(conv(*inputs), expected)
    assert torch.autograd.gradcheck(conv, inputs)
    assert torch.autograd.gradgradcheck(conv, inputs)


def test_same_conv_under_vmap_keeps_second_derivatives():
    """vmap(grad(...)) over tasks with per-task weights (torch's grouped convolution underneath)
    against a loop of F.conv2d, to second order, in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 6, 6, dtype=torch.float64, generator=generator)
    weight = torch.randn(3, 4, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)

    def squared_gradient(conv, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(lambda w: conv(x, w).tanh().sum())(weight).pow(2).sum()

    vmapped = torch.vmap(partial(squared_gradient, same_conv2d))(x, weight).sum()
    reference = partial(F.conv2d, padding=1)
    looped = sum(squared_gradient(reference, x[t], weight[t]) for t in range(3))
    torch.testing.assert_close(vmapped, looped)
    (vmapped_grad,) = torch.autograd.grad(vmapped, weight)
    (looped_grad,) = torch.autograd.grad(looped, weight)
    torch.testing.assert_close(vmapped_grad, looped_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("option", "channels"), [("widen", 1), ("channels_last", 2)])
def test_the_gpu_paths_of_the_tasks_convolution_change_nothing_to_second_order(option: str, channels: int):
    """What a GPU runs for the tasks' convolution with per-task weights: one-channel images (Omniglot's
    first layer) widened with a zero channel, so that cuDNN takes them (`widen`), and the tasks folded
    into channels-last memory (`channels_last`). In float64 the output, the weight gradient and the
    derivatives of both equal the plain path's; the channels-last output stays channels-last."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, channels, 6, 6, dtype=torch.float64)  # tasks, images, channels
    weight = torch.randn(3, 5, channels, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def derivatives(gpu_path: bool) -> tuple[torch.Tensor, ...]:
        y = conv_per_task(3, (0, 0, 0), x, weight, bias, 1, **{option: gpu_path})
        (gradient,) = torch.autograd.grad(y.sin().sum(), weight, create_graph=True)
        return y, gradient, *torch.autograd.grad(gradient.pow(2).sum() + y.pow(3).sum(), [weight, bias])

    for gpu, plain in zip(derivatives(True), derivatives(False), strict=True):
        torch.testing.assert_close(gpu, plain, rtol=1e-12, atol=1e-12)
    y = conv_per_task(3, (0, 0, 0), x, weight, bias, 1, **{option: True})
    assert y.shape == (3, 4, 5, 6, 6)
    folded = y.transpose(0, 1).flatten(1, 2)  # (images, tasks x channels, ...), as the next layer folds it
    assert folded.is_contiguous(memory_format=torch.channels_last) == (option == "channels_last")


def test_a_second_order_meta_step_fills_no_zero_gradients():
    """The layers' backward passes make no zero-filled tensor the size of an activation (gradients of
    the pool's indices, of batch norm's statistics, of a pool's or ReLU's mask): on a GPU each is a
    kernel writing memory for nothing, and in a CUDA graph every replay repeats it."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from fewsight.training import bench

    class ZeroFills(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func._schema.name.split("::")[-1] in ("zeros", "zeros_like", "new_zeros", "fill_", "zero_"):
                self.sizes += [v.numel() for v in tree_leaves(out) if isinstance(v, torch.Tensor)]
            return out

    case = bench.Case("omniglot", "maml", ways=3, shots=1, meta_batch=2, inner_steps=2, queries=2)
    torch.manual_seed(0)
    learner = bench.build_learner(case.config())
    learner.per_task = False
    batch = bench.meta_batch(case, case.meta_batch, torch.device("cpu"), torch.float32)
    largest_parameter = max(p.numel() for p in learner.parameters())
    with ZeroFills() as fills:
        learner.meta_loss(batch).loss.backward()
    assert all(size <= largest_parameter for size in fills.sizes), max(fills.sizes)


def test_conv4_trains_under_bf16_autocast():
    """The custom convolution and batch norm backward passes run under autocast (as `--bf16` does),
    first and second order, and give float32 gradients pointing where float32's do (bf16 alone moves
    each tensor's gradient by about 20% here, as it did with torch's own layers)."""
    torch.manual_seed(0)
    model, x, y = Conv4(5), torch.rand(10, 1, 28, 28), torch.arange(10) % 5

    def gradients(bf16: bool, create_graph: bool) -> list[torch.Tensor]:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)
        if create_graph:  # a second-order quantity, as MAML's meta-gradient
            grads = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(model.parameters()))
        return list(grads)

    for create_graph in (False, True):
        low, full = gradients(True, create_graph), gradients(False, create_graph)
        assert all(g.dtype == torch.float32 for g in low)
        low, full = torch.cat([g.flatten() for g in low]), torch.cat([g.flatten() for g in full])
        assert F.cosine_similarity(low, full, dim=0) > 0.9


def test_maml_meta_gradient_equals_torch_layers_one(monkeypatch: pytest.MonkeyPatch):
    """End to end, float64: the second-order MAML meta-gradient through Conv4's layers (vmapped)
    equals the one through torch's own convolution and a written-out batch norm (per-task loop)."""
    from fewsight.nets import conv4
    from fewsight.training import bench

    case = bench.Case("omniglot", "maml", 5, 1, 2, inner_steps=2, queries=2)
    torch.manual_seed(0)
    learner = bench.build_learner(case.config()).double()
    batch = bench.meta_batch(case, 2, torch.device("cpu"), torch.float64)
    gradients = bench.fewsight_implementation(per_task=False)(learner, batch)()
    vmapped = {name: value.clone() for name, value in gradients.items()}

    def torch_layers(self, x, context_size=None, film=None):
        x = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        variance, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + 1e-5) * self.norm.weight.view(1, -1, 1, 1)
        return F.relu(F.max_pool2d(x + self.norm.bias.view(1, -1, 1, 1), 2))

    monkeypatch.setattr(conv4.ConvBlock, "forward", torch_layers)
    reference = bench.fewsight_implementation(per_task=True)(learner, batch)()
    for name, value in reference.items():
        torch.testing.assert_close(vmapped[name], value, rtol=1e-10, atol=1e-12)


def test_batch_norm_second_derivative_inside_one_transform():
    """A gradient of a gradient taken inside torch.func alone (no plain autograd below), as a user's
    Hessian-vector product would, matches the written-out form in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64, generator=generator)
    weight = torch.rand(4, dtype=torch.float64, generator=generator).add(0.5)
    bias = torch.randn(4, dtype=torch.float64, generator=generator)
    fused = torch.func.grad(partial(second_order, batch_norm, x, bias=bias))(weight)
    written = torch.func.grad(partial(second_order, written_out_batch_norm, x, bias=bias))(weight)
    torch.testing.assert_close(fused, written, rtol=1e-10, atol=1e-10)


def test_max_pool2_with_indices_equals_torchs_with_gradient():
    """max_pool2_with_indices (channels-last on the CPU) gives torch's values, argmax indices (ties included:
    small integers tie often) and input gradient, in torch's own layout, odd sizes included."""
    generator = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 6, 6), (2, 3, 7, 7), (1, 2, 5, 8)]:
        x = torch.randint(0, 3, shape, generator=generator).double().requires_grad_()
        pooled, indices = max_pool2_with_indices(x)
        expected, expected_indices = F.max_pool2d(x, 2, return_indices=True)
        assert torch.equal(pooled, expected) and torch.equal(indices, expected_indices)
        assert pooled.is_contiguous() and indices.is_contiguous()
        weights = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
        (grad,) = torch.autograd.grad((pooled * weights).sum(), x)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
        assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize(
    "pool, slope, reference",
    [
        (pool_relu, 0.0, lambda x: F.relu(F.max_pool2d(x, 2))),
        (partial(leaky_relu_pool, negative_slope=0.1), 0.1, lambda x: F.max_pool2d(F.leaky_relu(x, 0.1), 2)),
    ],
    ids=["relu (Conv4)", "leaky relu (ResNet-12)"],
)
def test_the_folded_pools_are_torchs_to_second_order(pool, slope, reference):
    """Conv4's and ResNet-12's pool endings equal torch's functions; the pool Function under them
    passes gradcheck and gradgradcheck; and under vmap(grad(...)) over tasks (the folded layout) their
    second derivatives equal a loop's of torch's functions, in float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    function = lambda x: _PoolReLU.apply(x, slope)[0]  # noqa: E731
    torch.testing.assert_close(pool(x), reference(x))
    torch.testing.assert_close(function(x), reference(x))
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))

    tasks = torch.randn(3, 2, 4, 7, 7, dtype=torch.float64, generator=generator)  # odd: the pool floors
    scale = torch.rand(3, 4, dtype=torch.float64, generator=generator).add(0.5).requires_grad_()

    def squared_gradient(pool, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        loss = lambda s: pool(x * s.view(1, -1, 1, 1)).pow(3).sum()  # noqa: E731
        return torch.func.grad(loss)(scale).pow(2).sum()

    vmapped = torch.vmap(partial(squared_gradient, pool))(tasks, scale).sum()
    looped = sum(squared_gradient(reference, tasks[t], scale[t]) for t in range(3))
    torch.testing.assert_close(vmapped, looped)
    (vmapped_grad,) = torch.autograd.grad(vmapped, scale)
    (looped_grad,) = torch.autograd.grad(looped, scale)
    torch.testing.assert_close(vmapped_grad, looped_grad, rtol=1e-10, atol=1e-10)
    # A gradient of a gradient inside torch.func alone (the gather of the pool's double backward).
    inside = torch.func.grad(partial(squared_gradient, pool, tasks[0]))(scale[0].detach())
    torch.testing.assert_close(
        inside, torch.func.grad(partial(squared_gradient, reference, tasks[0]))(scale[0].detach())
    )


def test_imagenet_input_norm_is_part_of_the_model_and_not_of_its_checkpoint():
    from fewsight.nets.inputs import IMAGENET, input_norm

    torch.manual_seed(0)
    plain = Conv4(5, in_channels=3, hidden=8, image_size=32)
    normalising = Conv4(5, in_channels=3, hidden=8, image_size=32)
    normalising.load_state_dict(plain.state_dict())
    normalising.input_norm = input_norm("imagenet")
    assert normalising.state_dict().keys() == plain.state_dict().keys()  # old checkpoints load
    x = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    torch.testing.assert_close(normalising(x), plain((x - mean) / std))
