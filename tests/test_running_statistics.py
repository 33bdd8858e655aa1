"""benchmarks/running_statistics.py: the running averages it gathers are torch's own."""

import torch
from torch import nn

from benchmarks.running_statistics import paired_scores, running_statistics
from fewsight.nets import TaskBatchNorm


def test_running_statistics_equal_those_torch_batch_norm_keeps_in_training():
    """Two convolutions with batch norm, trained-mode passes over three batches: fewsight's layers get
    the running mean and variance that torch's BatchNorm2d (momentum 0.1) holds after the same passes,
    the second layer's from inputs normalised with batch statistics, as in training."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 4, 3).double(), nn.Conv2d(4, 5, 3).double()]
    ours = nn.Sequential(convs[0], TaskBatchNorm(4), nn.ReLU(), convs[1], TaskBatchNorm(5)).double()
    theirs = nn.Sequential(convs[0], nn.BatchNorm2d(4), nn.ReLU(), convs[1], nn.BatchNorm2d(5)).double()
    for norm in (ours[1], ours[4]):
        norm.population_mean = torch.zeros_like(norm.weight)  # where torch's running statistics start
        norm.population_var = torch.ones_like(norm.weight)
    batches = [torch.rand(6, 3, 9, 9, dtype=torch.float64) * scale + scale for scale in (1, 2, 3)]
    running_statistics(ours, batches)
    theirs.train()
    with torch.no_grad():
        for batch in batches:
            theirs(batch)
    for mine, torchs in ((ours[1], theirs[1]), (ours[4], theirs[4])):
        torch.testing.assert_close(mine.population_mean, torchs.running_mean)
        torch.testing.assert_close(mine.population_var, torchs.running_var)
        assert not torch.allclose(torchs.running_var, torch.ones_like(torchs.running_var))  # it moved
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(batches[0]), theirs(batches[0]))  # then used as torch's in eval mode


def test_paired_scores_score_each_variant_on_the_same_episodes():
    """Features that separate the classes score 1; the same features shuffled across images score
    near chance; a copy of a variant scores exactly as it on every episode."""
    labels = torch.arange(10).repeat_interleave(20)
    separated = nn.functional.one_hot(labels, 10).double() + 0.01 * torch.rand(200, 10, dtype=torch.float64)
    shuffled = separated[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    scores = paired_scores({"a": separated, "b": shuffled, "c": separated.clone()}, labels, 1, 50)
    assert scores["a"].eq(1).all()
    assert scores["b"].mean() < 0.5
    assert torch.equal(scores["a"], scores["c"]) and len(scores["a"]) == 50
