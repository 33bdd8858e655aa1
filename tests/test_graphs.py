"""CUDA graphs replay the meta-training step exactly (the GPU tests run on the GPU machine only)."""

from __future__ import annotations

import pytest
import torch

from fewsight.data import EpisodeSampler
from fewsight.graphs import GraphedTrainingStep, _restore, _snapshot, load, static_copy
from fewsight.runs import RunConfig, build_learner

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def batches(data, count: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list:
    sampler = EpisodeSampler(data, 5, 1, 3, device, dtype)
    generator = sampler.generator(0)
    return [sampler.sample(4, generator) for _ in range(count)]


def test_loading_a_batch_keeps_the_static_tensors_in_place(omniglot_train):
    first, fresh = batches(omniglot_train, 2)
    static = static_copy(first)
    address = static.support_x.data_ptr()
    load(static, fresh)
    assert static.support_x.data_ptr() == address
    assert torch.equal(static.support_x, fresh.support_x) and torch.equal(static.query_y, fresh.query_y)


def test_snapshot_puts_weights_and_a_fresh_optimiser_back():
    learner = build_learner(RunConfig(algorithm="maml"))
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    saved = _snapshot(learner, optimizer)
    for p in learner.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    _restore(saved)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    state = next(iter(optimizer.state.values()))
    assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()


@cuda
@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_replayed_training_equals_eager_training(omniglot_train, algorithm):
    """In float64, where the GPU's kernels agree to rounding whichever algorithm cuDNN picks."""
    drawn = batches(omniglot_train, 4, "cuda", torch.float64)
    weights = []
    for graphed in (False, True):
        torch.manual_seed(0)
        learner = build_learner(RunConfig(algorithm=algorithm)).to("cuda", torch.float64)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, capturable=True)
        step = GraphedTrainingStep(learner, optimizer, drawn[0]) if graphed else None
        for batch in drawn:
            if step is not None:
                step(batch)
            else:
                optimizer.zero_grad()
                learner.meta_loss(batch).loss.backward()
                optimizer.step()
        weights.append(learner.state_dict())
    for name, value in weights[0].items():
        if not name.endswith("conv.bias"):  # exact gradient 0 before batch norm: Adam steps on noise
            torch.testing.assert_close(weights[1][name], value, rtol=1e-9, atol=1e-9)


def test_cuda_graphs_on_the_cpu_get_a_clear_error(tmp_path, capsys):
    from fewsight.cli import main

    assert main(["train", "--cuda-graphs", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "--cuda-graphs needs a GPU" in capsys.readouterr().err
