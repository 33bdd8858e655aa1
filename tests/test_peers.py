"""Each peer library's MAML meta-step (benchmarks/peers.py) against fewsight's, in float64.

The peers are an optional extra that CI does not install: each case skips when its peer is absent.
"""

import importlib.util

import pytest
import torch

from benchmarks.peers import (
    PEERS,
    TorchBatchNorm,
    TorchConvBlock,
    implementations,
    make_peer_step,
    torch_twin,
)
from fewsight.algorithms import MAML
from fewsight.data import EpisodeSampler
from fewsight.nets import Conv4
from fewsight.training import bench


@pytest.fixture(scope="module")
def learner_and_batch(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=1, dtype=torch.float64)
    torch.manual_seed(0)
    learner = MAML(Conv4(5, hidden=16).double(), inner_lr=0.4, steps=2, per_task=True)
    return learner, sampler.sample(2, sampler.generator(0))


def test_torch_twin_computes_the_same_logits(learner_and_batch):
    """The peers' twin is made of torch's layers alone (as the peers' users would write it: no
    fewsight batch norm, convolution or pooling function) and computes the same logits."""
    learner, batch = learner_and_batch
    twin = torch_twin(learner.model)
    assert not any(type(m).__module__.startswith("fewsight.nets") for m in twin.modules() if m is not twin)
    assert {type(m) for m in twin.modules()} >= {torch.nn.Conv2d, TorchBatchNorm, TorchConvBlock}
    x = batch.query_x[0]
    torch.testing.assert_close(twin(x), learner.model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("peer", PEERS)
def test_peer_meta_gradient_equals_fewsight(learner_and_batch, peer):
    pytest.importorskip(peer)
    learner, batch = learner_and_batch
    reference = {
        k: v.clone() for k, v in bench.fewsight_implementation(per_task=True)(learner, batch)().items()
    }
    step = make_peer_step(peer, learner, batch)
    for _ in range(2):  # a second call must give the same gradient (no state left behind)
        grads = step()
        assert grads.keys() == reference.keys()
        flat = torch.cat([grads[n].flatten() for n in reference])
        expected = torch.cat([g.flatten() for g in reference.values()])
        relative = (flat - expected).norm() / expected.norm()
        assert relative < 1e-10, f"{peer}: relative error {relative:.1e}"


def test_implementations_offer_the_installed_peers_for_maml_only():
    maml = bench.Case("omniglot", "maml", ways=5, shots=1, meta_batch=2)
    installed = [peer for peer in PEERS if importlib.util.find_spec(peer) is not None]
    assert list(implementations(maml)) == installed
    assert implementations(bench.Case("omniglot", "fomaml", ways=5, shots=1, meta_batch=2)) == {}
