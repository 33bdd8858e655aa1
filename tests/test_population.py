"""Population batch-norm statistics: fixed mean and variance over many images, for evaluation."""

import json

import pytest
import torch

from fewsight.cli import main
from fewsight.nets import Conv4, TaskBatchNorm
from fewsight.nets.population import (
    STATISTICS_FILE,
    estimate_population_statistics,
    has_population_statistics,
)
from fewsight.use.export import load_exported
from fewsight.use.models import BUNDLED, load_model
from tests.conftest import SHARED_DATA, make_task, train_tiny

SAMPLE = SHARED_DATA / "miniimagenet-sample"


def test_statistics_are_the_mean_and_variance_of_each_layers_input():
    torch.manual_seed(0)
    network = Conv4(None).double()
    images = torch.rand(23, 1, 28, 28, dtype=torch.float64)
    estimate_population_statistics(network, images, batch_size=5)  # uneven batches
    first = network.blocks[0]
    with torch.no_grad():  # the first batch norm's input, whatever the statistics
        variance, mean = torch.var_mean(first.conv(images), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(first.norm.population_mean, mean)
    torch.testing.assert_close(first.norm.population_var, variance)
    norms = [m for m in network.modules() if isinstance(m, TaskBatchNorm)]
    assert all(m.population_mean is not None and (m.population_var >= 0).all() for m in norms)


def test_with_population_statistics_each_image_is_normalised_on_its_own():
    torch.manual_seed(0)
    network = Conv4(None).double().eval()
    images = torch.rand(12, 1, 28, 28, dtype=torch.float64)
    together, alone = network(images)[:1], network(images[:1])
    assert not torch.allclose(together, alone)  # batch statistics: the batch changes each output
    estimate_population_statistics(network, torch.rand(30, 1, 28, 28, dtype=torch.float64))
    torch.testing.assert_close(network(images)[:1], network(images[:1]))
    under_vmap = torch.vmap(network)(images.view(3, 4, 1, 28, 28))
    torch.testing.assert_close(under_vmap.flatten(0, 1), network(images))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/miniimagenet-sample is not here")
def test_eval_with_population_statistics(capsys, maml_run):
    flags = ["--ways", "5", "--shots", "1", "--queries", "4", "--episodes", "4", "--quiet", "--json"]
    command = ["eval", "miniimagenet", *flags, "--data-root", str(SAMPLE), "--device", "cpu"]
    assert main([*command, "--norm", "population"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["norm"] == "population" and 0 <= result["mean"] <= 1
    assert main(["eval", str(maml_run), "--norm", "population", "--quiet", "--device", "cpu"]) == 2
    assert "model-based family" in capsys.readouterr().err


def test_statistics_travel_with_the_state_dict_and_are_cleared_by_one_without():
    torch.manual_seed(0)
    network, fresh = Conv4(None).double().eval(), Conv4(None).double().eval()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    plain = network.state_dict()
    estimate_population_statistics(network, torch.rand(30, 1, 28, 28, dtype=torch.float64))
    fresh.load_state_dict(network.state_dict())  # buffers that were None take the saved tensors
    assert has_population_statistics(fresh)
    torch.testing.assert_close(fresh(images[:1]), network(images)[:1])
    fresh.load_state_dict(plain)  # a state dict without them: batch statistics again
    assert not has_population_statistics(fresh)
    assert not torch.allclose(fresh(images)[:1], fresh(images[:1]))


def _eval(capsys, run, *flags):
    command = ["eval", str(run), "--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "4"]
    status = main([*command, "--json", "--quiet", "--device", "cpu", *flags])
    captured = capsys.readouterr()
    return (json.loads(captured.out) if status == 0 else None), captured.err


def test_kept_statistics_are_the_models_own_until_it_trains_on(omniglot_train, drawings, tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny(run, "--algorithm", "protonet", "--ways", "3", "--non-transductive")
    capsys.readouterr()
    task, _ = _eval(capsys, run)
    assert task["norm"] == "task" and not (run / STATISTICS_FILE).exists()
    assert _eval(capsys, run, "--keep-statistics")[1].startswith("fewsight: error: --keep-statistics")
    estimated, _ = _eval(capsys, run, "--norm", "population", "--keep-statistics")
    assert (run / STATISTICS_FILE).is_file()
    kept, _ = _eval(capsys, run)  # the same statistics, read back: the same score
    assert kept["norm"] == "population" and kept["mean"] == estimated["mean"]
    assert _eval(capsys, run, "--norm", "task")[0] == task
    assert has_population_statistics(load_model(run)[1])
    assert not has_population_statistics(load_model(run, norm="task")[1])
    # An exported classifier carries them, and predicts as the run does.
    support, query = make_task(drawings, tmp_path, classes=3)
    exported = tmp_path / "classifier.pt"
    flags = ["--device", "cpu"]
    assert main(["export", str(run), "--support", str(support), "--out", str(exported), *flags]) == 0
    assert has_population_statistics(load_exported(exported)[1].learner)
    capsys.readouterr()
    assert main(["predict", str(run), "--support", str(support), "--query", str(query), *flags]) == 0
    from_run = capsys.readouterr().out
    assert main(["predict", str(exported), "--query", str(query), *flags]) == 0
    assert capsys.readouterr().out == from_run
    # Trained on, the run's weights are no longer those of its statistics: they are left out.
    train_tiny(run, "--algorithm", "protonet", "--ways", "3", "--steps", "3", "--resume")
    capsys.readouterr()
    trained_on, warning = _eval(capsys, run)
    assert trained_on["norm"] == "task" and "other weights" in warning


def test_the_bundled_miniimagenet_model_ships_statistics_of_its_own_weights(recwarn):
    _, learner = load_model("miniimagenet")
    assert has_population_statistics(learner) and not recwarn.list
    norms = [m for m in learner.modules() if isinstance(m, TaskBatchNorm)]
    assert all(torch.isfinite(m.population_mean).all() and (m.population_var > 0).all() for m in norms)


def test_a_bundled_model_keeps_no_statistics_in_the_package(capsys):
    bundled = BUNDLED / "omniglot"
    before = sorted(p.name for p in bundled.iterdir())
    result, err = _eval(capsys, "omniglot", "--norm", "population", "--keep-statistics")
    assert result is None and err.count("\n") == 1 and "copy its folder" in err
    assert sorted(p.name for p in bundled.iterdir()) == before
