"""The meta learning-rate schedules: ProtoNet's halving (Snell et al.) as a function of the step, set
on the optimiser by `fewsight train`, followed exactly by a resumed run, and refused beside another;
Reptile's linear fall with a plain SGD step; the settings that apply to some optimisers only."""

import pytest
import torch

from fewsight.cli import main
from fewsight.training.schedules import cosine_lr, halving_lr, linear_lr, meta_learning_rate

TINY = ["--algorithm", "protonet", "--ways", "3", "--meta-batch", "1", "--queries", "1"]
TINY += ["--log-every", "1", "--val-every", "100", "--checkpoint-every", "100", "--quiet", "--device", "cpu"]


def test_halving_halves_after_every_interval():
    assert [halving_lr(1e-3, s, 2000) for s in (1, 2000, 2001, 4000, 4001)] == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    )
    assert meta_learning_rate(1e-3, 4001, 60000, cosine=False, halve_every=2000) == pytest.approx(2.5e-4)
    assert meta_learning_rate(1e-3, 7, 100, cosine=True, halve_every=0) == cosine_lr(1e-3, 7, 100)
    assert meta_learning_rate(1e-3, 7, 100, cosine=False, halve_every=0) is None


def test_the_linear_schedule_falls_from_the_rate_towards_zero():
    """Reptile's code: frac_done = i / meta_iters, step size (1 - frac_done) * 1 for i = 0 .. 99,999."""
    assert [linear_lr(1.0, s, 100_000) for s in (1, 50_001, 100_000)] == pytest.approx([1.0, 0.5, 1e-5])
    assert meta_learning_rate(1.0, 3, 4, cosine=False, halve_every=0, linear=True) == pytest.approx(0.5)


def _optimiser_rate(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]


def test_train_halves_the_rate_and_a_resumed_run_follows(omniglot_train, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "3", "--lr-halve-every", "2", *TINY, "--out", str(run)]) == 0
    assert _optimiser_rate(run) == pytest.approx(5e-4)  # step 3: halved once
    assert main(["train", "--steps", "5", *TINY, "--out", str(run), "--resume"]) == 0
    assert _optimiser_rate(run) == pytest.approx(2.5e-4)  # step 5: twice, the saved schedule kept


@pytest.mark.parametrize(
    "flags", [["--cosine-lr", "--lr-halve-every", "2"], ["--linear-lr", "--lr-halve-every", "2"]]
)
def test_two_schedules_at_once_are_refused(omniglot_train, tmp_path, capsys, flags):
    assert main(["train", "--steps", "3", *flags, *TINY, "--out", str(tmp_path / "run")]) != 0
    assert "keep one" in capsys.readouterr().err


def test_a_plain_sgd_step_falling_linearly_is_what_train_sets(omniglot_train, tmp_path):
    run = tmp_path / "run"
    flags = ["--meta-optimizer", "sgd", "--meta-momentum", "0", "--meta-lr", "1", "--linear-lr"]
    assert main(["train", "--steps", "4", *flags, *TINY, "--out", str(run)]) == 0
    group = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"]) == (pytest.approx(0.25), 0.0)  # step 4 of 4: 1 - 3/4


def test_extending_a_linear_schedule_says_its_rate_rises_again(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--linear-lr", *TINY, "--out", str(run)]) == 0
    assert main(["train", "--steps", "4", *TINY, "--out", str(run), "--resume"]) == 0
    assert "--steps 4 extends this run from 2 steps: its learning-rate schedule now spans 4" in (
        capsys.readouterr().err
    )
    assert _optimiser_rate(run) == pytest.approx(1e-3 * (1 - 3 / 4))


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--meta-momentum", "0"], "--meta-momentum is the momentum of --meta-optimizer sgd"),
        (["--meta-optimizer", "sgd", "--meta-momentum", "1"], "--meta-momentum must be in [0, 1)"),
        (["--inner-optimizer", "adam"], "--inner-optimizer applies to --algorithm reptile only"),
        (["--inner-batch", "4"], "--inner-batch applies to --algorithm reptile only"),
    ],
)
def test_settings_that_do_not_apply_are_refused_in_one_line(omniglot_train, tmp_path, capsys, flags, says):
    assert main(["train", "--steps", "3", *TINY, *flags, "--out", str(tmp_path / "run")]) != 0
    assert says in capsys.readouterr().err


def test_reptile_refuses_mini_batches_larger_than_its_tasks(omniglot_train, tmp_path, capsys):
    flags = ["--algorithm", "reptile", "--inner-batch", "7"]  # 3 ways x (1 shot + 1 query) = 6 images
    assert main(["train", "--steps", "1", *TINY, *flags, "--out", str(tmp_path / "run")]) != 0
    assert "--inner-batch 7 is more than a task's 6 images" in capsys.readouterr().err


def test_the_cosine_floor_sets_where_the_cosine_ends(omniglot_train, tmp_path):
    """MAML++'s code anneals to min_learning_rate; its miniImageNet configurations set it equal to the
    meta learning rate, so --cosine-floor 1 keeps the rate constant along the whole run."""
    assert cosine_lr(1e-3, 100, 100, 0.01) == pytest.approx(1e-5)
    assert [
        meta_learning_rate(1e-3, s, 100, True, 0, cosine_floor=1.0) for s in (1, 50, 100)
    ] == pytest.approx([1e-3] * 3)
    run = tmp_path / "run"
    flags = ["--cosine-lr", "--cosine-floor", "0.5", "--steps", "3", *TINY, "--out", str(run)]
    assert main(["train", *flags]) == 0
    assert _optimiser_rate(run) == pytest.approx(5e-4)  # the last step: the floor, half of 1e-3
