"""Population batch-norm statistics: fixed mean and variance over many images, for evaluation."""

import json

import pytest
import torch

from fewsight.cli import main
from fewsight.nets import Conv4, TaskBatchNorm
from fewsight.nets.population import estimate_population_statistics
from tests.conftest import SHARED_DATA

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
