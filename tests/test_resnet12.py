"""ResNet-12: shapes, the functional path under vmap, MAML's meta-gradient through it, DropBlock."""

import pytest
import torch
from torch.func import functional_call

from fewsight.algorithms import MAML, ProtoNet
from fewsight.data import EpisodeSampler, load_miniimagenet
from fewsight.nets import ResNet12
from fewsight.nets.dropblock import drop_block
from fewsight.nets.resnet12 import NARROW_WIDTHS
from tests.conftest import SHARED_DATA, assert_meta_training_lowers_the_loss

SAMPLE = SHARED_DATA / "miniimagenet-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/miniimagenet-sample is not here")


@pytest.fixture(scope="module")
def sample32():
    """The sample's training classes at 32x32 (ResNet-12 on the CPU stays fast)."""
    return load_miniimagenet("train", 32, SAMPLE)


def test_shapes():
    full = ResNet12(5)
    assert full.block_channels == [64, 160, 320, 640] and full.feature_size == 640
    assert sum(p.numel() for p in full.parameters()) == 12_427_525  # MetaOptNet's 12.4M with a 5-way head
    narrow = ResNet12(None, widths=NARROW_WIDTHS)  # Meta-Baseline's: 8.0M, 8 MB in int8
    assert narrow.block_channels == [64, 128, 256, 512] and narrow.feature_size == 512
    assert sum(p.numel() for p in narrow.parameters()) == 7_996_800
    tiny = ResNet12(None, width=0.125)
    assert tiny.block_channels == [8, 20, 40, 80]
    assert tiny(torch.rand(2, 3, 84, 84)).shape == (2, 80)
    assert ResNet12(20, in_channels=1, width=0.125)(torch.rand(3, 1, 28, 28)).shape == (3, 20)


def test_functional_call_under_vmap_equals_the_module(sample32):
    torch.manual_seed(0)
    model = ResNet12(5, width=0.125).double()
    batch = EpisodeSampler(sample32, 5, 1, 3, dtype=torch.float64).sample(3, torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    vectorised = torch.vmap(lambda x: functional_call(model, params, (x,), {"context_size": 5}))(
        batch.query_x
    )
    looped = torch.stack([model(x, context_size=5) for x in batch.query_x])
    torch.testing.assert_close(vectorised, looped, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transductive", [True, False])
def test_maml_meta_gradient_equals_per_task_reference(sample32, transductive):
    batch = EpisodeSampler(sample32, 5, 1, 1, dtype=torch.float64).sample(2, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = ResNet12(5, width=0.0625).double()
    gradients = []
    for per_task in (False, True):
        learner = MAML(model, inner_lr=0.1, steps=2, transductive=transductive, per_task=per_task)
        loss = learner.meta_loss(batch).loss
        gradients.append(
            torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
        )
    vectorised, reference = gradients
    assert (vectorised - reference).norm() / reference.norm() < 1e-9


def test_drop_block_drops_whole_blocks_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(16, 8, 10, 10)
    dropped = drop_block(x, 0.1, 5)
    assert dropped.mean().item() == pytest.approx(1.0, rel=1e-6)  # rescaled by the kept fraction
    zero = dropped == 0
    assert 0.03 < zero.float().mean() < 0.15
    # Every dropped unit lies in a dropped 5x5 block: its zero-runs along a row have length >= 5.
    rows = zero.flatten(0, 2).int()
    assert not torch.equal(rows, torch.zeros_like(rows))
    for row in rows[rows.any(1)][:50].tolist():
        runs = "".join(map(str, row)).split("0")
        assert all(len(run) >= 5 for run in runs if run)
    assert torch.equal(drop_block(x, 0.0, 5), x)


def test_drop_block_is_off_in_eval_mode_and_differs_per_task_under_vmap(sample32):
    torch.manual_seed(0)
    model = ResNet12(None, width=0.125, drop_rate=0.5).double()
    x = sample32.images[:6].double() / 255
    params = dict(model.named_parameters())
    twice = torch.stack([x, x])
    features = torch.vmap(lambda x: functional_call(model, params, (x,)), randomness="different")(twice)
    assert not torch.allclose(features[0], features[1])
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), ResNet12.features(model, x))


def test_a_few_protonet_steps_lower_the_loss(sample32):
    torch.manual_seed(0)
    sampler = EpisodeSampler(sample32, 5, 1, 2)
    assert_meta_training_lowers_the_loss(ProtoNet(ResNet12(None, width=0.0625)), sampler)
