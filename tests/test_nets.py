import torch

from fewsight.nets import Conv4, TaskBatchNorm


def test_conv4_shapes():
    assert Conv4(5)(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    wide = Conv4(20, in_channels=3, hidden=32, image_size=84)
    assert wide.feature_size == 800
    assert wide(torch.rand(2, 3, 84, 84)).shape == (2, 20)


def test_fused_and_written_out_batch_norm_agree_to_second_order():
    """Plain autograd takes torch's fused kernel; torch.func (and context_size) the written-out form.
    In float64 both give the same outputs, gradients and second derivatives."""
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
