import torch
import torch.nn.functional as F

from fewsight.nets import Conv4, TaskBatchNorm


def test_conv4_shapes():
    assert Conv4(5)(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    wide = Conv4(20, in_channels=3, hidden=32, image_size=84)
    assert wide.feature_size == 800
    assert wide(torch.rand(2, 3, 84, 84)).shape == (2, 20)


def test_task_batch_norm_equals_training_mode_batch_norm():
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    norm = TaskBatchNorm(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.normal_()
    expected = F.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_context_size_normalises_with_the_first_samples_only():
    norm = TaskBatchNorm(2).double()
    support, queries = torch.randn(4, 2, 3, 3).double(), torch.randn(5, 2, 3, 3).double()
    joint = norm(torch.cat([support, queries]), context_size=4)
    torch.testing.assert_close(joint[:4], norm(support))
    # Each query's output depends on the support set and itself alone.
    alone = norm(torch.cat([support, queries[:1]]), context_size=4)[4:]
    torch.testing.assert_close(joint[4:5], alone)
