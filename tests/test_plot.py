"""fewsight plot writes the PNG files a user opens."""

import pytest
from PIL import Image

from fewsight.cli import main
from tests.conftest import train_tiny

pytest.importorskip("matplotlib")


def test_plots_of_the_bundled_model(omniglot_train, tmp_path):
    assert main(["plot", "omniglot", "--out", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    for name in ("curves.png", "episode.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300
    assert not (tmp_path / "steps.png").exists()  # model-based: one forward pass, no steps


def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["plot", "omniglot", "--out", str(tmp_path / "file"), "--quiet", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is a file; plot writes PNG files into a folder" in error


def test_accuracy_against_adaptation_steps_for_maml(omniglot_train, tmp_path):
    run = tmp_path / "run"
    train_tiny(run, "--val-every", "1", "--val-episodes", "2")  # curves with validation loss and accuracy
    assert main(["plot", str(run), "--max-steps", "2", "--episodes", "2", "--quiet", "--device", "cpu"]) == 0
    assert {p.name for p in (run / "plots").iterdir()} == {"curves.png", "episode.png", "steps.png"}


def test_tensorboard_event_files_during_training(omniglot_train, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    train_tiny(run, "--tensorboard")
    events = accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2]
