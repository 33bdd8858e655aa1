"""ProtoNet's metrics: the logits against a plain per-task reference in float64, the learned cosine
temperature, the --metric flags, and run folders saved before the metric existed."""

import json
import shutil

import pytest
import torch

from fewsight import EpisodeSampler, ProtoNet
from fewsight.cli import main
from fewsight.errors import FewsightError
from fewsight.nets import Conv4
from fewsight.run.config import RunConfig
from fewsight.use.models import BUNDLED, load_model

WAYS = 5


@pytest.fixture(scope="module")
def batch64(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=WAYS, shots=2, queries=3, dtype=torch.float64)
    return sampler.sample(2, sampler.generator(0))


def reference_logits(learner: ProtoNet, support_x, support_y, query_x) -> torch.Tensor:
    """One task's logits written out plainly: class means, then distances or scaled cosines."""
    support, queries = learner.encoder(support_x), learner.encoder(query_x)  # each its own statistics
    prototypes = torch.stack([support[support_y == c].mean(0) for c in range(WAYS)])
    if learner.metric == "euclidean":
        return -(torch.cdist(queries, prototypes) ** 2)
    norms = queries.norm(dim=1, keepdim=True) * prototypes.norm(dim=1)
    return learner.temperature * (queries @ prototypes.T) / norms


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_batched_logits_equal_the_per_task_reference(batch64, metric):
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(None), metric=metric).double()
    if metric == "cosine":
        torch.nn.init.constant_(learner.temperature, 7.5)  # not the initial value, so that it counts
    with torch.no_grad():
        batched = learner.query_logits(batch64)
        for task in range(len(batched)):
            expected = reference_logits(
                learner, batch64.support_x[task], batch64.support_y[task], batch64.query_x[task]
            )
            torch.testing.assert_close(batched[task], expected, rtol=1e-10, atol=1e-10)


def test_the_temperature_starts_at_10_and_is_learned(omniglot_train):
    learner = ProtoNet(Conv4(None), metric="cosine")
    assert learner.temperature.item() == 10.0
    assert any(p is learner.temperature for p in learner.parameters())  # the meta-optimiser updates it
    sampler = EpisodeSampler(omniglot_train, ways=WAYS, shots=1, queries=2)
    learner.meta_loss(sampler.sample(2, sampler.generator(0))).loss.backward()
    assert learner.temperature.grad is not None and learner.temperature.grad.abs() > 0


def test_euclidean_learners_hold_only_the_encoder():
    """So that checkpoints written before the cosine metric still load, strictly."""
    learner = ProtoNet(Conv4(None))
    assert learner.state_dict().keys() == {f"encoder.{k}" for k in learner.encoder.state_dict()}


def test_with_metric_rescores_the_same_encoder():
    learner = ProtoNet(Conv4(None)).eval()
    cosine = learner.with_metric("cosine")
    assert cosine.encoder is learner.encoder and not cosine.training
    assert cosine.with_metric("cosine") is cosine
    with pytest.raises(FewsightError, match="unknown metric 'dot'"):
        learner.with_metric("dot")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--algorithm", "maml", "--metric", "cosine"], "--metric applies to --algorithm protonet"),
        (["train", "--algorithm", "weightpred", "--metric", "cosine"], "--metric applies to --algorithm"),
        (
            ["eval", "{maml}", "--metric", "cosine"],
            "--metric applies to protonet and pretrain runs, not maml",
        ),
    ],
)
def test_metric_is_refused_for_other_algorithms(maml_run, tmp_path, capsys, argv, message):
    argv = [a.format(maml=maml_run) for a in argv]
    assert main([*argv, *(["--out", str(tmp_path / "r")] if argv[0] == "train" else []), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_an_unknown_metric_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--algorithm", "protonet", "--metric", "dot", "--out", "x"])
    assert "invalid choice: 'dot'" in capsys.readouterr().err
    with pytest.raises(FewsightError, match="unknown metric 'dot'; use one of euclidean, cosine"):
        RunConfig(algorithm="protonet", metric="dot").validate()  # a config.json edited by hand


def test_a_run_saved_without_a_metric_loads_as_euclidean(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(BUNDLED / "omniglot", run)
    saved = json.loads((run / "config.json").read_text())
    saved.pop("metric", None)  # as written before the metric existed
    (run / "config.json").write_text(json.dumps(saved))
    config, learner = load_model(run)
    assert config.metric == "euclidean" and learner.metric == "euclidean"
    _, bundled = load_model("omniglot")
    assert bundled.state_dict().keys() == learner.state_dict().keys()
