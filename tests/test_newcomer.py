"""A newcomer on a laptop (issue 27): a run that says where it runs and how long it will take, a time
budget that always ends with a usable model, and messages that name the fix."""

import json
import os
import signal

import pytest
import torch

from fewsight.cli import main
from fewsight.errors import FewsightError
from fewsight.training.device import describe
from fewsight.training.metatrain import expected_time
from fewsight.training.timing import format_duration, parse_duration
from tests.test_cli import TINY
from tests.test_interrupt import signalling_learners

PROTONET = ["--algorithm", "protonet", *TINY]


def test_time_takes_seconds_minutes_and_hours_and_refuses_the_rest(tmp_path, capsys):
    assert [parse_duration(t) for t in ("90s", "12m", "1.5h", "1h30m", "10")] == [90, 720, 5400, 5400, 600]
    for bad in ("soon", "10x", "0m", "m"):
        with pytest.raises(FewsightError, match="90s, 12m"):
            parse_duration(bad)
    assert [format_duration(s) for s in (40, 720, 205_000)] == ["40 s", "12 min", "56 h 57 min"]
    with pytest.raises(SystemExit):
        main(["train", "--time", "soon", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert "argument --time" in error and "90s, 12m, 1.5h" in error and "Traceback" not in error


def test_train_says_where_it_runs_and_how_long_the_run_will_take(omniglot_train, tmp_path, capsys):
    assert describe(torch.device("cpu"), "training").startswith("training on the CPU (")
    hint = expected_time(3.5, 6, 60_000, torch.device("cpu"), None)
    assert hint.startswith("3.50 s a step: the 59,994 steps left take about 58 h 20 min")
    assert "--time 30m" in hint and "--algorithm protonet" in hint and "--time 11m" in hint  # the CPU recipe
    budget = expected_time(3.5, 6, 60_000, torch.device("cpu"), 600)
    assert budget.endswith("--time 10 min stops it after about 171 of them")
    assert "recipe" not in expected_time(0.03, 6, 60_000, torch.device("cuda"), None)  # a GPU needs no hint
    quiet = [flag for flag in PROTONET if flag != "--quiet"]
    assert main(["train", "--steps", "7", *quiet, "--out", str(tmp_path / "run")]) == 0
    error = capsys.readouterr().err
    assert "training on the CPU (" in error
    assert "s a step: the 1 steps left take about" in error


def test_time_budget_ends_with_a_validated_checkpoint_that_eval_and_resume_take(
    omniglot_train, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", "--steps", "50", *PROTONET, "--time", "0.001s", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"--time stopped it at step 1 of 50: fewsight eval {run} scores it" in out
    assert f"fewsight train --resume --out {run} continues it" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "val_accuracy" in rows[-1]  # validated though --val-every is 2
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1
    assert main(["eval", str(run), "--episodes", "4", "--batch", "4", "--quiet", "--device", "cpu"]) == 0
    assert "the last checkpoint's weights, training unfinished (step 1 of 50)" in capsys.readouterr().out
    resumed = ["train", "--resume", "--time", "0.001s", "--quiet", "--device", "cpu", "--out", str(run)]
    assert main(resumed) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    assert "step 2 of 50" in capsys.readouterr().out


@pytest.mark.skipif(os.name != "posix", reason="signals sent with os.kill")
def test_ctrl_c_names_the_saved_step_and_the_resume_command(omniglot_train, tmp_path, monkeypatch, capsys):
    run = tmp_path / "my run"
    signalling_learners(monkeypatch, signal.SIGINT, at_step=3)
    assert main(["train", "--steps", "5", *TINY, "--out", str(run)]) == 130
    error = capsys.readouterr().err
    assert error == (
        f"fewsight: interrupted; checkpoint.pt holds step 3; continue from it with: "
        f"fewsight train --resume --out '{run}'\n"
    )
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3


def test_predict_csv_into_a_missing_folder_says_so_and_names_the_fix(tmp_path, capsys):
    csv = tmp_path / "missing" / "dir" / "x.csv"
    argv = ["predict", "omniglot", "--support", str(tmp_path), "--query", str(tmp_path), "--csv", str(csv)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Errno" not in error
    assert f"the folder {csv.parent} does not exist; create it (mkdir -p {csv.parent})" in error
    assert "or choose another path" in error


def test_predict_csv_naming_a_folder_says_so_before_any_work(tmp_path, capsys):
    folder = str(tmp_path)
    assert main(["predict", "omniglot", "--support", folder, "--query", folder, "--csv", folder]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Errno" not in error
    assert f"--csv {tmp_path} is a folder; name a file in it" in error

    beside = tmp_path / "file"
    beside.write_text("not a folder")
    csv = str(beside / "x.csv")
    assert main(["predict", "omniglot", "--support", folder, "--query", folder, "--csv", csv]) == 2
    assert f"{beside} is a file, not a folder" in capsys.readouterr().err
