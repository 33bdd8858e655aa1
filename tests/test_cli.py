"""End to end through the command line, on the real Omniglot."""

import json

import pytest
import torch

from fewsight.cli import main
from fewsight.data import EpisodeSampler
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from tests.conftest import metrics

TINY = [
    "--meta-batch",
    "2",
    "--queries",
    "2",
    "--log-every",
    "1",
    "--val-every",
    "2",
    "--val-episodes",
    "4",
    "--checkpoint-every",
    "2",
    "--quiet",
    "--device",
    "cpu",
]


def test_train_resume_and_eval(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", *TINY, "--out", str(run)]) == 0
    assert main(["train", "--steps", "3", *TINY, "--out", str(run), "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert "val_accuracy" in rows[1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    capsys.readouterr()
    assert (
        main(["eval", str(run), "--episodes", "6", "--batch", "4", "--json", "--quiet", "--device", "cpu"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 6 and 0 <= result["mean"] <= 1 and result["ci95"] >= 0
    # the protocol the papers report beside a score (Omniglot's Conv4: 64 channels a block, 28x28)
    assert result["backbone"] == "conv4" and result["widths"] == [64] * 4 and result["image_size"] == 28
    assert (result["training"], result["trained_ways"], result["trained_shots"]) == ("episodic", 5, 1)
    assert result["queries"] == 2
    assert result["transductive"] is True
    assert (result["weights"], result["step"]) == ("last", 3)


def test_the_best_validated_weights_are_kept_and_evaluated(omniglot_train, tmp_path, capsys):
    """best.pt holds the weights of the first best validation score; scoring them again on the same
    validation episodes gives that score, and a run that never validated says so in one line."""
    run = tmp_path / "run"
    assert main(["train", "--steps", "4", *TINY, "--val-every", "1", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best_row = max(rows, key=lambda row: (row["val_accuracy"], -row["step"]))
    best = torch.load(run / "best.pt", weights_only=True)
    assert (best["step"], best["val_accuracy"]) == (best_row["step"], best_row["val_accuracy"])
    capsys.readouterr()
    rescore = ["eval", str(run), "--weights", "best", "--split", "val", "--seed", "1", "--episodes", "4"]
    assert main([*rescore, "--batch", "2", "--json", "--quiet", "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["mean"] == pytest.approx(best_row["val_accuracy"])
    assert scored["loss"] == pytest.approx(best_row["val_loss"])  # the same episodes' query loss
    assert (scored["weights"], scored["step"]) == ("best", best_row["step"])  # which weights were scored
    unvalidated = tmp_path / "unvalidated"
    assert main(["train", "--steps", "1", *TINY, "--out", str(unvalidated)]) == 0
    capsys.readouterr()
    assert main(["eval", str(unvalidated), "--weights", "best", "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "has no best.pt" in error and "--weights last" in error and error.count("\n") == 1


def test_best_by_loss_keeps_the_weights_of_the_lowest_validation_loss(omniglot_train, tmp_path):
    """--best-by loss (Snell et al.'s early stopping): best.pt and the kept weights are those of the
    lowest validation loss, which every validated metrics row records."""
    run = tmp_path / "run"
    flags = ["--steps", "5", *TINY, "--val-every", "1", "--best-by", "loss", "--keep-best", "2"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ranked = sorted(rows, key=lambda row: (row["val_loss"], row["step"]))
    best = torch.load(run / "best.pt", weights_only=True)
    assert (best["step"], best["val_loss"]) == (ranked[0]["step"], ranked[0]["val_loss"])
    assert {path.name for path in run.glob("best-*.pt")} == {f"best-{r['step']}.pt" for r in ranked[:2]}
    assert len({row["val_loss"] for row in rows}) > 1  # the losses differ: the choice was a real one


def test_the_best_scores_weights_are_kept_and_scored_as_an_ensemble(omniglot_train, tmp_path, capsys):
    """--keep-best 2 keeps the weights of the two best validation scores (on a tie the earlier), and
    --weights ensemble scores them together, recording which steps it scored."""
    run = tmp_path / "run"
    flags = ["--steps", "5", *TINY, "--val-every", "1", "--keep-best", "2", "--out", str(run)]
    assert main(["train", *flags]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ranked = sorted(rows, key=lambda row: (-row["val_accuracy"], row["step"]))[:2]
    kept = [torch.load(path, weights_only=True) for path in run.glob("best-*.pt")]
    assert {k["step"]: k["val_accuracy"] for k in kept} == {r["step"]: r["val_accuracy"] for r in ranked}
    assert {path.name for path in run.glob("best-*.pt")} == {f"best-{r['step']}.pt" for r in ranked}
    capsys.readouterr()
    score = ["eval", str(run), "--weights", "ensemble", "--episodes", "4", "--batch", "2", "--json"]
    assert main([*score, "--quiet", "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["weights"], scored["step"]) == ("ensemble", sorted(r["step"] for r in ranked))
    assert main(["eval", str(run), "--weights", "ensemble", "--norm", "population", "--quiet"]) == 2
    assert "drop --norm population" in capsys.readouterr().err
    for path in run.glob("best-*.pt"):
        path.unlink()
    assert main(["eval", str(run), "--weights", "ensemble", "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "has no best-STEP.pt files" in error and "--keep-best" in error and error.count("\n") == 1


def test_an_ensemble_averages_its_members_logits(omniglot_train):
    """As MAML++'s code: the mean of the members' logits (not of their probabilities, which can rank the
    classes otherwise); copies of one learner give that learner's logits."""
    from fewsight.use.ensemble import Ensemble

    torch.manual_seed(0)
    first = build_learner(RunConfig(algorithm="maml", inner_steps=1)).eval()
    second = build_learner(RunConfig(algorithm="maml", inner_steps=1)).eval()
    tasks = next(iter(EpisodeSampler(omniglot_train, 5, 1, 2).fixed_episodes(2, 2, 0)))
    logits = [first.query_logits(tasks), second.query_logits(tasks)]
    together = Ensemble([first, second], [1, 2]).query_logits(tasks)
    torch.testing.assert_close(together, (logits[0] + logits[1]) / 2, rtol=1e-5, atol=1e-5)
    probabilities = (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2
    assert not torch.allclose(together.softmax(-1), probabilities, atol=1e-4)
    torch.testing.assert_close(Ensemble([first, first], [1, 2]).query_logits(tasks), logits[0])


def test_out_of_memory_says_who_holds_the_card(tmp_path, capsys, monkeypatch):
    """A GPU out of memory ends in one line that says how much this run and the other processes
    hold (trainings side by side on one card ran out this way) and names the flags to lower."""
    import fewsight.training.metatrain

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    gib = 2**30
    monkeypatch.setattr(fewsight.training.metatrain, "train", out_of_memory)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * gib)
    assert main(["train", "--steps", "1", *TINY, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "this run holds 3.0 GiB, other processes 76.0 GiB, of 80.0" in error
    assert "lower --meta-batch" in error and "fewer processes" in error and error.count("\n") == 1


def test_resume_refuses_a_changed_setting_and_takes_a_short_command(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "1", *TINY, "--inner-lr", "0.2", "--out", str(run)]) == 0
    capsys.readouterr()
    changed = ["train", "--steps", "2", *TINY, "--inner-lr", "0.3", "--out", str(run), "--resume"]
    assert main(changed) == 2
    error = capsys.readouterr().err
    assert "--inner-lr 0.3 (the run's: 0.2)" in error and error.count("\n") == 1
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1  # nothing was trained
    short = ["train", "--steps", "2", "--quiet", "--device", "cpu", "--out", str(run), "--resume"]
    assert main(short) == 0  # flags left at their defaults keep the run's settings
    assert RunConfig.load(run).inner_lr == 0.2 and RunConfig.load(run).checkpoint_every == 2
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    bookkeeping = ["--checkpoint-every", "3", "--log-every", "3", "--val-every", "3"]  # may change
    assert main([*short[:2], "6", *short[3:], *bookkeeping]) == 0
    assert RunConfig.load(run).checkpoint_every == 3
    assert [row["step"] for row in metrics(run)] == [1, 2, 3, 6]  # logged every 3 steps from then on


def test_resume_keeps_the_run_length_unless_raised_and_warns_of_a_stretched_cosine(
    omniglot_train, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--cosine-lr", *TINY, "--out", str(run)]) == 0
    assert main(["train", "--quiet", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    assert RunConfig.load(run).steps == 2  # not the 60,000 of a new run: the schedule is unchanged
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    assert "warning" not in capsys.readouterr().err
    assert main(["train", "--steps", "3", "--quiet", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    error = capsys.readouterr().err
    assert error.startswith("fewsight: warning: --steps 3 extends this run from 2 steps")
    assert error.count("\n") == 1  # one line, no file name or source line
    assert RunConfig.load(run).steps == 3
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    assert main(["train", "--steps", "2", "--quiet", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    error = capsys.readouterr().err  # never cut, but the command that asked for it hears why
    assert error.startswith("fewsight: warning: --steps 2 is shorter than this run's 3 steps")
    assert "it keeps 3" in error
    assert RunConfig.load(run).steps == 3


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(omniglot_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "1", *TINY, "--inner-lr", "0.2", "--out", str(run)]) == 0
    for checkpoint in run.glob("checkpoint*.pt"):  # as if killed before it wrote one: config.json and
        checkpoint.unlink()  # metrics stay (with checkpoint-1.pt left, --resume would go on from it)
    capsys.readouterr()
    assert main(["train", "--steps", "2", "--quiet", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    error = capsys.readouterr().err
    assert "warning:" in error and "no checkpoint.pt yet" in error and error.count("\n") == 1
    assert RunConfig.load(run).inner_lr == 0.2  # the saved settings, not the defaults
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    assert [row["step"] for row in metrics(run)] == [1, 2]  # the lost step's row is not kept twice


SGD = ["--meta-optimizer", "sgd", "--meta-lr", "0.01", "--weight-decay", "5e-4"]  # Meta-Baseline's stage


@pytest.mark.parametrize("optimizer", [[], SGD], ids=["adam", "sgd"])
def test_resumed_run_equals_uninterrupted(omniglot_train, tmp_path, optimizer):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    main(["train", "--steps", "4", *TINY, *optimizer, "--out", str(whole)])
    main(["train", "--steps", "2", *TINY, *optimizer, "--out", str(parts)])
    main(["train", "--steps", "4", *TINY, "--out", str(parts), "--resume"])
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(parts / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["learner"][name], b["learner"][name]) for name in a["learner"])
    moments = {key for state in a["optimizer"]["state"].values() for key in state}
    assert moments == ({"momentum_buffer"} if optimizer else {"step", "exp_avg", "exp_avg_sq"})


def test_meta_grad_clip_bounds_every_element_of_the_update(omniglot_train, tmp_path):
    """One plain SGD step of 0.1 moves no weight by more than 0.1 times the clipping bound (and the
    unclipped step moves some by far more)."""
    sgd = ["--meta-optimizer", "sgd", "--meta-lr", "0.1", "--steps", "1", *TINY]
    moved = {}
    for clip in ("0", "1e-3"):
        run = tmp_path / clip
        main(["train", *sgd, "--meta-grad-clip", clip, "--out", str(run)])
        config = RunConfig.load(run)
        torch.manual_seed(config.seed)
        start = build_learner(config).state_dict()
        after = torch.load(run / "checkpoint.pt", weights_only=True)["learner"]
        moved[clip] = max(
            (after[n] - start[n]).abs().max().item() for n, _ in build_learner(config).named_parameters()
        )
    assert 0 < moved["1e-3"] <= 0.1 * 1e-3 + 2.4e-7 < 0.1 * moved["0"], moved  # 2.4e-7: float32 rounding


def test_meta_optimizer_and_weight_decay_refuse_bad_values(tmp_path):
    from tests.test_inputs import assert_clear_error, run_cli

    for flags, message in (
        (["--meta-optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 (off) or more"),
        (["--meta-grad-clip", "nan"], "--meta-grad-clip must be 0 (off) or more"),
    ):
        status, _, err = run_cli(["train", *flags, "--out", str(tmp_path / "bad")])
        assert_clear_error(status, err)
        assert message in err


def test_task_loop_trains_task_by_task(omniglot_train, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--task-loop", "--task-chunk", "1", *TINY, "--out", str(run)]) == 0
    config = RunConfig.load(run)
    assert config.task_loop and build_learner(config).per_task is True


def test_a_run_saved_by_a_graphed_gpu_step_resumes_on_the_cpu(omniglot_train, tmp_path):
    """A checkpoint written with CUDA graphs holds a capturable Adam with tensor learning rates; the
    eager step on a CPU must get a plain one back (and a graphed step a capturable one)."""
    run = tmp_path / "run"
    main(["train", "--steps", "2", *TINY, "--out", str(run)])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["capturable"], group["lr"] = True, torch.tensor(group["lr"])
    torch.save(state, run / "checkpoint.pt")
    assert main(["train", "--steps", "3", *TINY, "--out", str(run), "--resume"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--ways", "5000", "--out", "{tmp}/r"], "need 5000 classes"),
        (["train", "--shots", "15", "--queries", "15", "--out", "{tmp}/r"], "at least 30 images"),
        (["train", "--meta-batch", "0", "--out", "{tmp}/r"], "--meta-batch must be at least 1"),
        (["train", "--algorithm", "protonet", "--task-loop", "--out", "{tmp}/r"], "apply to maml"),
        (["eval", "{tmp}/missing"], "no run folder"),
        (["eval", "{tmp}"], "has no config.json, so it is not a run folder"),
    ],
)
def test_bad_input_fails_at_once_with_the_fix(omniglot_train, tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_unknown_algorithm_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algorithm", "nope", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "algorithm", ["fomaml", "metasgd", "anil", "reptile", "protonet", "weightpred", "hypernet", "leo"]
)
def test_every_algorithm_trains_and_evaluates_from_the_cli(omniglot_train, tmp_path, algorithm, capsys):
    run = tmp_path / algorithm
    extra = ["--base-mix", "0.5"] if algorithm == "weightpred" else []
    assert main(["train", "--algorithm", algorithm, "--steps", "2", *TINY, *extra, "--out", str(run)]) == 0
    capsys.readouterr()
    evaluate = ["eval", str(run), "--episodes", "4", "--batch", "4", "--json", "--quiet", "--device", "cpu"]
    assert main(evaluate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algorithm"] == algorithm and result["widths"] == [64] * 4
