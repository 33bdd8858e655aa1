"""MAML++'s switches and the memory levers: each meta-gradient against the plain per-task reference
(float64), chunked and recomputed runs against plain ones, the schedules, and training end to end."""

import itertools
import json
import math

import pytest
import torch

from fewsight.algorithms import MAML
from fewsight.algorithms.multistep import MSL_FLOOR, multi_step_weights
from fewsight.cli import main
from fewsight.data import EpisodeSampler
from fewsight.nets import Conv4
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.run.folder import load_learner
from fewsight.training.schedules import cosine_lr
from tests.conftest import assert_meta_training_lowers_the_loss

SWITCHES = {
    "multi-step-loss": {"multi_step_loss": 10},
    "learned-rates": {"learned_rates": True},
    "per-step-norm": {"per_step_norm": True},
    "first-order-phase": {"first_order_steps": 10},  # meta-step 3 < 10: first order
    "all": {"multi_step_loss": 10, "learned_rates": True, "per_step_norm": True},
    "all-non-transductive": {
        "multi_step_loss": 10,
        "learned_rates": True,
        "per_step_norm": True,
        "transductive": False,
    },
}
ALL = SWITCHES["all"]


@pytest.fixture(scope="module")
def batch64(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=1, dtype=torch.float64)
    return sampler.sample(3, sampler.generator(0))


def learner(**options) -> MAML:
    """A float64 MAML (3 inner steps) on a small seeded Conv4 whose parameters (learned rates and
    per-step norms too) are nudged off their initial values, the same way each call, so all matter."""
    torch.manual_seed(0)
    maml = MAML(Conv4(5, hidden=16).double(), inner_lr=0.3, steps=3, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in maml.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    maml.schedule(4)
    return maml


def meta_gradient(maml, batch):
    loss = maml.meta_loss(batch).loss
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(maml.parameters()))])


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_meta_gradient_equals_per_task_reference(batch64, switch):
    vectorised = meta_gradient(learner(per_task=False, **SWITCHES[switch]), batch64)
    reference = meta_gradient(learner(per_task=True, **SWITCHES[switch]), batch64)
    assert relative(vectorised, reference) < 1e-9


def test_switches_change_the_meta_gradient(batch64):
    plain = meta_gradient(learner(), batch64)
    first = meta_gradient(learner(first_order_steps=10), batch64)
    assert relative(first, plain) > 1e-3
    one_loss = meta_gradient(learner(multi_step_loss=10), batch64)
    assert relative(one_loss, plain) > 1e-3


def test_after_its_annealing_the_multi_step_loss_is_the_last_steps_alone(batch64):
    """As MAML++'s code: once the weights have been annealed (meta-step 10 of 10), the meta-gradient is
    plain MAML's, to rounding, where a meta-step earlier it still differs."""
    plain = meta_gradient(learner(), batch64)
    annealing, annealed = learner(multi_step_loss=10), learner(multi_step_loss=10)
    annealing.schedule(10)  # meta-step 9: the earlier steps' losses still weigh in
    annealed.schedule(11)
    assert relative(meta_gradient(annealing, batch64), plain) > 1e-3
    assert relative(meta_gradient(annealed, batch64), plain) < 1e-12
    assert annealing.step_variant() != annealed.step_variant()  # a graphed step records again


def test_learned_rates_and_norms_are_parameters_of_the_right_shapes():
    maml = learner(**ALL)
    assert [tuple(r.shape) for r in maml.step_rates] == [(3,)] * len(maml.adapted)
    assert not any("norm" in name for name in maml.adapted)
    assert [tuple(p.shape) for p in maml.step_norms] == [(2, 16)] * 8
    names = {name for name, _ in maml.named_parameters()}
    assert {"step_rates.0", "step_norms.0"} <= names


@pytest.mark.parametrize(
    ("per_task", "options"),
    [(False, {}), (False, ALL), (False, {"first_order": True}), (True, ALL)],
    ids=["maml", "all", "fomaml", "all-reference"],
)
def test_recomputed_inner_loop_gives_the_same_meta_gradient(batch64, per_task, options):
    plain = meta_gradient(learner(per_task=per_task, **options), batch64)
    recomputed = meta_gradient(learner(per_task=per_task, checkpoint_inner=True, **options), batch64)
    assert relative(recomputed, plain) < 1e-12


@pytest.mark.parametrize(
    ("chunk", "checkpoint_inner", "per_task"), [(1, False, False), (2, True, False), (1, False, True)]
)
def test_chunked_tasks_give_the_same_loss_and_meta_gradient(batch64, chunk, checkpoint_inner, per_task):
    """Also with plain autograd task by task (`--task-loop --task-chunk 1`, learn2learn's memory)."""
    whole = learner(**ALL)
    chunked = learner(task_chunk=chunk, checkpoint_inner=checkpoint_inner, per_task=per_task, **ALL)
    torch.testing.assert_close(chunked.meta_loss(batch64).loss, whole.meta_loss(batch64).loss)
    assert relative(meta_gradient(chunked, batch64), meta_gradient(whole, batch64)) < 1e-12


def test_eval_mode_uses_the_last_step_and_extra_steps_reuse_the_last_rates(batch64):
    maml = learner(**ALL).eval()
    maml.eval_steps = 5  # more test-time steps than training steps
    with torch.no_grad():
        batched = maml.query_logits(batch64)
    one = batch64.task(2)
    torch.testing.assert_close(maml.adapt(one.support_x[0], one.support_y[0])(one.query_x[0]), batched[2])


def test_multi_step_weights_sum_to_one_and_anneal_towards_the_last_step():
    steps, anneal = 5, 100
    assert multi_step_weights(steps, 0, anneal) == pytest.approx([0.2] * 5)
    previous = None
    for step in range(0, 150, 10):
        weights = multi_step_weights(steps, step, anneal)
        assert math.isclose(sum(weights), 1.0) and min(weights) >= MSL_FLOOR / steps - 1e-15
        if previous is not None:
            assert weights[-1] >= previous[-1] and weights[0] <= previous[0]
        previous = weights
    assert multi_step_weights(steps, 100, anneal) == pytest.approx([0.006] * 4 + [0.976])
    assert multi_step_weights(1, 7, anneal) == [1.0]


def test_derivative_order_switches_at_the_right_step():
    maml = MAML(Conv4(5), steps=2, first_order_steps=3)
    orders = []
    for step in range(1, 6):
        maml.schedule(step)
        orders.append(maml._first_order())
    assert orders == [True, True, True, False, False]
    assert not maml.eval()._first_order()  # test time has no meta-gradient to anneal


def test_cosine_learning_rate_follows_the_schedule():
    assert cosine_lr(1e-3, 1, 101) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 51, 101) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert cosine_lr(1e-3, 101, 101) == pytest.approx(1e-5)
    rates = [cosine_lr(1e-3, s, 101) for s in range(1, 102)]
    assert all(a > b for a, b in itertools.pairwise(rates))


TINY = ["--meta-batch", "2", "--queries", "1", "--log-every", "1", "--val-every", "100"]
TINY += ["--checkpoint-every", "100", "--quiet", "--device", "cpu"]


def test_cosine_lr_flag_sets_the_optimiser_rate(omniglot_train, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "3", *TINY, "--cosine-lr", "--out", str(run)]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["lr"] == pytest.approx(cosine_lr(1e-3, 3, 3))


def test_mamlpp_preset_switches_everything_on(omniglot_train, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--algorithm", "mamlpp", "--steps", "2", *TINY, "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["inner_steps"] == saved["eval_inner_steps"] == 5
    assert saved["learned_inner_lr"] and saved["per_step_bn"] and saved["cosine_lr"]
    assert saved["multi_step_loss"] == 1 and saved["first_order_steps"] == 0
    _, trained = load_learner(run)
    assert trained.step_rates is not None and len(trained.step_norms) == 8
    assert main(["train", "--steps", "3", *TINY, "--out", str(run), "--resume"]) == 0
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 3 and "step_rates.0" in resumed["learner"]


def test_resumed_mamlpp_switches_equal_an_uninterrupted_run(omniglot_train, tmp_path):
    switches = ["--inner-steps", "2", "--multi-step-loss", "3", "--first-order-steps", "2"]
    switches += ["--learned-inner-lr", "--per-step-bn", "--task-chunk", "1", "--checkpoint-inner"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", "--steps", "4", *TINY, *switches, "--out", str(whole)]) == 0
    assert main(["train", "--steps", "2", *TINY, *switches, "--out", str(parts)]) == 0
    assert main(["train", "--steps", "4", *TINY, "--out", str(parts), "--resume"]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["learner"]
    b = torch.load(parts / "checkpoint.pt", weights_only=True)["learner"]
    assert "step_rates.0" in a and all(torch.equal(a[name], b[name]) for name in a)


def test_mamlpp_lowers_the_loss(omniglot_train):
    config = RunConfig(algorithm="mamlpp", inner_steps=2, steps=100)
    torch.manual_seed(0)
    maml = build_learner(config)
    maml.schedule(1)
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=5)
    assert_meta_training_lowers_the_loss(maml, sampler)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algorithm", "protonet", "--per-step-bn"], "MAML++ switches apply"),
        (
            ["--algorithm", "reptile", "--task-chunk", "2"],
            "--task-chunk, --checkpoint-inner and --task-loop apply",
        ),
        (["--task-chunk", "-1"], "--task-chunk must be 0"),
    ],
)
def test_bad_switches_get_a_message(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
