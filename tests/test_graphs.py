"""CUDA graphs replay the meta-training step exactly (the GPU tests run on the GPU machine only)."""

from __future__ import annotations

import pytest
import torch

from fewsight.algorithms.multistep import multi_step_weights
from fewsight.data import EpisodeSampler
from fewsight.run.algorithms import mamlpp_preset
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.training.graphs import (
    GraphedTrainingStep,
    _restore,
    _snapshot,
    load,
    plain_learning_rates,
    set_learning_rate,
    static_copy,
)
from fewsight.training.metatrain import meta_optimizer
from fewsight.training.schedules import cosine_lr

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


RECORDED = {  # name: the run's settings
    "maml": {"algorithm": "maml"},
    "protonet": {"algorithm": "protonet"},
    "reptile": {"algorithm": "reptile"},
    "reptile-adam": {  # Adam's second moment, a buffer updated in the step; a plain SGD meta step
        "algorithm": "reptile",
        "inner_optimizer": "adam",
        "inner_lr": 0.001,
        "meta_optimizer": "sgd",
        "meta_momentum": 0.0,
        "meta_lr": 0.5,
    },
    "mamlpp": {"algorithm": "mamlpp", "multi_step_loss": 2, "first_order_steps": 2},
    "metabaseline-stage": {  # SGD with momentum and weight decay, each 2 tasks' images one batch
        "algorithm": "protonet",
        "metric": "cosine",
        "step_statistics": True,
        "step_statistics_tasks": 2,
        "meta_optimizer": "sgd",
        "meta_lr": 0.125,  # exact in float32, in which a fused kernel reads its rate
        "weight_decay": 5e-4,
    },
}


@cuda
@pytest.mark.parametrize("recipe", RECORDED)
def test_replayed_training_equals_eager_training(omniglot_train, recipe):
    """In float64, where the GPU's kernels agree to rounding whichever algorithm cuDNN picks. MAML++
    follows its schedules: multi-step loss weights and a cosine learning rate read from tensors, and a
    switch from first to second order after two steps, which records the step again. The optimiser
    is the one training builds for a recorded step (Adam, or Meta-Baseline's SGD)."""
    drawn = batches(omniglot_train, 4, "cuda", torch.float64)
    config = RunConfig(inner_steps=2, steps=4, **RECORDED[recipe])
    mamlpp_preset(config)
    weights = []
    for graphed in (False, True):
        torch.manual_seed(0)
        learner = build_learner(config).to("cuda", torch.float64)
        optimizer = meta_optimizer(learner, config, graphs=True)
        step = GraphedTrainingStep(learner, optimizer, drawn[0]) if graphed else None
        for number, batch in enumerate(drawn, 1):
            learner.schedule(number)
            if config.cosine_lr:
                set_learning_rate(optimizer, cosine_lr(config.meta_lr, number, config.steps))
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


def test_cpu_training_runs_eagerly_with_cuda_graphs_on(tmp_path, capsys):
    """CUDA graphs are on by default and apply on a GPU only: the CPU trains as before."""
    from fewsight.cli import main

    out = tmp_path / "run"
    flags = ["--ways", "3", "--queries", "2", "--meta-batch", "2", "--steps", "2", "--trainval", "--quiet"]
    assert main(["train", "--cuda-graphs", "--device", "cpu", *flags, "--out", str(out)]) == 0
    assert RunConfig.load(out).cuda_graphs


def test_learning_rates_set_in_place_when_they_are_tensors():
    learner = build_learner(RunConfig(algorithm="protonet"))
    optimizer = torch.optim.Adam(learner.parameters(), lr=0.1)
    set_learning_rate(optimizer, 0.5)
    assert optimizer.param_groups[0]["lr"] == 0.5
    rate = optimizer.param_groups[0]["lr"] = torch.tensor(0.1)
    set_learning_rate(optimizer, 0.25)
    assert optimizer.param_groups[0]["lr"] is rate and float(rate) == 0.25
    plain_learning_rates(optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.25 and not torch.is_tensor(optimizer.param_groups[0]["lr"])


def test_maml_schedules_reach_a_graph_through_tensors_and_variants():
    """MAML++'s multi-step loss weights live in a buffer refilled in place; its switches from first to
    second order and from every step's loss to the last's change the step's variant, which makes a
    graphed step record again."""
    config = RunConfig(algorithm="mamlpp", inner_steps=5, steps=30000, first_order_steps=3)
    mamlpp_preset(config)
    learner = build_learner(config)
    buffer = learner.loss_weights
    learner.train()
    variants = []
    for step in (1, 4, 100, 20000):
        learner.schedule(step)
        assert learner.loss_weights is buffer
        expected = multi_step_weights(5, step - 1, learner.multi_step_loss)
        torch.testing.assert_close(buffer, torch.tensor(expected))
        variants.append(learner.step_variant())
    # (first order, multi-step loss): the loss's annealing ends at 10% of the steps (3,000)
    assert variants == [(True, True), (False, True), (False, True), (False, False)]


def test_recording_times_both_paths_keeps_the_faster_and_puts_the_weights_back(omniglot_train, monkeypatch):
    """On the CPU, reruns of the step stand in for the graphs (tests/conftest.py)."""
    from fewsight.training import graphs
    from tests.conftest import capture_eagerly

    monkeypatch.setattr(graphs, "capture", capture_eagerly)
    torch.manual_seed(0)
    learner = build_learner(RunConfig(algorithm="maml", inner_steps=2))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    step = GraphedTrainingStep(learner, optimizer, batches(omniglot_train, 1)[0])
    assert set(step.path_seconds) == {True, False} and all(t > 0 for t in step.path_seconds.values())
    assert learner.replayed == min(step.path_seconds, key=step.path_seconds.get)
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert not next(iter(optimizer.state.values()))["exp_avg"].any()  # the optimiser as it was, too
    protonet = build_learner(RunConfig(algorithm="protonet"))  # one path only: nothing to time
    plain = GraphedTrainingStep(
        protonet, torch.optim.Adam(protonet.parameters()), batches(omniglot_train, 1)[0]
    )
    assert plain.path_seconds is None


def test_processes_of_a_group_keep_the_replayed_path_untimed(omniglot_train, monkeypatch):
    """Under torchrun no process times the paths: all run the replayed path's kernels."""
    from fewsight.training import graphs
    from tests.conftest import capture_eagerly

    monkeypatch.setattr(graphs, "capture", capture_eagerly)
    monkeypatch.setattr(graphs, "world", lambda: (0, 2))
    monkeypatch.setattr(graphs, "average_gradients", lambda parameters: None)  # no group here
    learner = build_learner(RunConfig(algorithm="maml", inner_steps=2))
    step = GraphedTrainingStep(learner, torch.optim.Adam(learner.parameters()), batches(omniglot_train, 1)[0])
    assert step.path_seconds is None and learner.replayed
    assert step.update is not None  # the two-graph form a process group needs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_both_paths_give_one_float32_meta_gradient(omniglot_train, device, monkeypatch):
    """MAML's two paths for a recorded step (vmap over grad, one level) agree in float32 too, not
    only in float64: the recording may take either, and processes of a group may time them apart."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 rounds to 10 bits: 1% apart
    torch.manual_seed(0)
    learner = build_learner(RunConfig(algorithm="maml", inner_steps=1)).to(device)
    batch = batches(omniglot_train, 1, device)[0]
    gradients = []
    for replayed in (True, False):
        learner.replayed = replayed
        learner.zero_grad(set_to_none=True)
        learner.meta_loss(batch).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
    replayed, one_level = gradients
    assert (replayed - one_level).norm() <= 1e-4 * one_level.norm()
