"""The model-based family: shapes, set invariance, batched = per-task, learning on real episodes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fewsight
from fewsight.nets import Conv4, ResNet12
from tests.conftest import SHARED_DATA, assert_meta_training_lowers_the_loss


def make(name: str, base_classes: int = 0) -> fewsight.ParameterPredictor:
    backbone = Conv4(None)
    if name.startswith("protonet"):
        return fewsight.ProtoNet(backbone, metric="cosine" if name == "protonet-cosine" else "euclidean")
    if name == "weightpred":
        return fewsight.WeightPrediction(
            backbone, 64, base_classes=base_classes, base_mix=0.5 * (base_classes > 0)
        )
    if name == "hypernet":
        return fewsight.TaskHypernetwork(backbone, Conv4(None, hidden=32))
    return fewsight.LEO(backbone, 64, steps=2)


NAMES = ["protonet", "protonet-cosine", "weightpred", "hypernet", "leo"]


@pytest.fixture(scope="module")
def batch64(omniglot_train):
    sampler = fewsight.EpisodeSampler(omniglot_train, ways=5, shots=2, queries=3, dtype=torch.float64)
    return sampler.sample(3, sampler.generator(0))


@pytest.fixture(scope="module")
def mini_sampler():
    """5-way 1-shot tasks with 2 queries from the miniImageNet sample's test photos (84x84)."""
    if not (SHARED_DATA / "miniimagenet-sample").is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    photos = fewsight.data.load_miniimagenet("test", root=SHARED_DATA / "miniimagenet-sample", progress=False)
    return fewsight.EpisodeSampler(photos, ways=5, shots=1, queries=2)


@pytest.mark.parametrize("name", NAMES)
def test_batched_logits_equal_the_per_task_classifier(batch64, name):
    torch.manual_seed(0)
    learner = make(name).double().eval()
    with torch.no_grad():
        batched = learner.query_logits(batch64)
    assert batched.shape == (3, 15, 5)
    for task in range(3):
        classifier = learner.adapt(batch64.support_x[task], batch64.support_y[task])
        torch.testing.assert_close(classifier(batch64.query_x[task]), batched[task])


@pytest.mark.parametrize("name", NAMES)
def test_support_set_order_does_not_matter(batch64, name):
    torch.manual_seed(0)
    learner = make(name).double().eval()
    support_x, support_y, queries = batch64.support_x[0], batch64.support_y[0], batch64.query_x[0]
    order = torch.randperm(len(support_y))
    first = learner.adapt(support_x, support_y)(queries)
    shuffled = learner.adapt(support_x[order], support_y[order])(queries)
    torch.testing.assert_close(first, shuffled)


def test_hypernetwork_conditions_the_backbone_on_the_task(batch64):
    torch.manual_seed(0)
    learner = make("hypernet").double().eval()
    for film in learner.films:  # leave the zero start: make the generated scale and shift matter
        torch.nn.init.normal_(film.weight, std=0.1)
    heads, _ = learner.heads_and_logits(batch64)
    scales = [learner._films(task)[0][0] for task in heads["task"]]
    assert not torch.allclose(scales[0], scales[1])


def test_hypernetwork_film_can_modulate_but_not_switch_off_the_features(batch64):
    """However large the generators' outputs, the FiLM scales stay in [0.5, 1.5] and the shifts in
    [-0.5, 0.5], so the conditioned features stay alive: unbounded, miniImageNet's first steps drove
    the shifts down until every ReLU was off and training stalled at chance."""
    torch.manual_seed(0)
    learner = make("hypernet").double().eval()
    for film in learner.films:
        torch.nn.init.normal_(film.weight, std=100.0)
        torch.nn.init.constant_(film.bias, -100.0)
    heads, logits = learner.heads_and_logits(batch64)
    for scale, shift in learner._films(heads["task"][0]):
        assert scale.min() >= 0.5 and scale.max() <= 1.5
        assert shift.min() >= -0.5 and shift.max() <= 0.5
    features = learner.encoder.features(batch64.query_x[0], films=learner._films(heads["task"][0]))
    assert (features > 0).float().mean() > 0.1
    assert logits.std(-1).min() > 0  # the classes are still told apart


def test_hypernetwork_task_encoding_is_per_channel_on_large_images(mini_sampler):
    """On 84x84 photos the set encoding averages over positions too, so it has one entry per channel
    of the task encoder, as on Omniglot, and one Adam step moves the FiLM scales by little (with the
    800 flattened features as inputs, one step took them from 1 to 0.38)."""
    batch = mini_sampler.sample(1, mini_sampler.generator(0))
    torch.manual_seed(0)
    learner = fewsight.TaskHypernetwork(Conv4(None, 3, 64, 84), Conv4(None, 3, 32, 84))
    assert [film.in_features for film in learner.films] == [32] * 4
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.meta_loss(batch).loss.backward()
    optimizer.step()
    heads, _ = learner.heads_and_logits(batch)
    scales = torch.cat([scale for scale, _ in learner._films(heads["task"][0])])
    assert 0 < (scales - 1).abs().max() < 0.1


def test_leo_adapted_logits_stay_small_on_wide_features(mini_sampler):
    """On 84x84 photos a Conv4 gives 1,600 features; LEO's decoded weights are scaled by 1/sqrt(1600)
    so that the logits after its latent steps stay near unit size (unscaled, they started near 40
    and training diverged), whatever the features' width."""
    batch = mini_sampler.sample(2, mini_sampler.generator(0))
    torch.manual_seed(0)
    wide = fewsight.LEO(Conv4(None, 3, 64, 84), 1600, steps=5)
    _, logits = wide.heads_and_logits(batch)
    assert 0 < logits.abs().mean() < 5


def test_leo_runs_saved_before_the_weight_scale_load_unscaled():
    """A LEO saved before its decoded weights were scaled (no weight_scale in its state) loads with
    scale 1, so it classifies as it was trained; a new one keeps its 1/sqrt(feature size)."""
    saved = fewsight.LEO(Conv4(None), 64).state_dict()
    assert saved["weight_scale"] == 64**-0.5
    older = {name: value for name, value in saved.items() if name != "weight_scale"}
    learner = fewsight.LEO(Conv4(None), 64)
    learner.load_state_dict(older)
    assert learner.weight_scale == 1.0
    learner.load_state_dict(saved)
    assert learner.weight_scale == 64**-0.5


def test_weight_prediction_mixes_in_base_class_weights(omniglot_train):
    sampler = fewsight.EpisodeSampler(omniglot_train, ways=5, shots=1, queries=2)
    batch = sampler.sample(4, sampler.generator(0))
    learner = make("weightpred", base_classes=sampler.num_classes)
    learner.meta_loss(batch).loss.backward()
    touched = learner.base_weights.grad.abs().sum(1) > 0
    assert touched.any()
    assert set(torch.nonzero(touched).flatten().tolist()) <= set(batch.classes.flatten().tolist())
    learner.eval()  # at test time the weights are predicted only
    learner.base_weights.grad = None
    learner.meta_loss(batch).loss.backward()
    assert learner.base_weights.grad is None or learner.base_weights.grad.abs().sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_lower_the_loss(omniglot_train, name):
    torch.manual_seed(0)
    sampler = fewsight.EpisodeSampler(omniglot_train, ways=5, shots=1, queries=5)
    assert_meta_training_lowers_the_loss(make(name), sampler)


def test_joint_statistics_embed_support_and_queries_as_one_batch(batch64):
    """Snell et al.'s batching: an episode's support and query images share batch-norm statistics."""
    torch.manual_seed(0)
    joint = fewsight.ProtoNet(Conv4(None), joint_statistics=True).double().train()
    separate = fewsight.ProtoNet(joint.encoder).double().train()
    logits = joint.query_logits(batch64)
    for task in range(3):
        support_x, support_y, query_x = (
            batch64.support_x[task],
            batch64.support_y[task],
            batch64.query_x[task],
        )
        features = joint.encoder(torch.cat([support_x, query_x]))
        prototypes = fewsight.algorithms.predictor.class_means(features[: len(support_x)], support_y, 5)
        expected = -(features[len(support_x) :].unsqueeze(1) - prototypes).pow(2).sum(-1)
        torch.testing.assert_close(logits[task], expected)
    assert not torch.allclose(logits, separate.query_logits(batch64)), "the joint batch changed nothing"
    joint.meta_loss(batch64).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.encoder.parameters())


@pytest.mark.parametrize("flag", ["--joint-statistics", "--step-statistics"])
def test_batch_statistics_are_a_recorded_protonet_setting(tmp_path, flag):
    from fewsight.cli import main
    from fewsight.run.config import RunConfig
    from tests.test_inputs import assert_clear_error, run_cli

    flags = ["--algorithm", "protonet", "--steps", "2", "--meta-batch", "2", "--queries", "1", "--quiet"]
    assert main(["train", *flags, flag, "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    assert getattr(RunConfig.load(tmp_path / "run"), flag[2:].replace("-", "_"))
    for wrong in (["--algorithm", "maml"], ["--algorithm", "protonet", "--non-transductive"]):
        status, _, err = run_cli(["train", *wrong, flag, "--out", str(tmp_path / "bad")])
        assert_clear_error(status, err)
        assert f"{flag} applies to --algorithm protonet, transductive" in err


def test_step_statistics_normalise_all_tasks_of_a_step_as_one_batch(batch64):
    """Meta-Baseline's batching in meta-training, on a user's network of torch's own layers: every
    image of the step's tasks shares batch-norm statistics; float64 logits and meta-gradients equal a
    plain reference; evaluation still scores each task on its own."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    ).double()
    step = fewsight.ProtoNet(encoder, metric="cosine", step_statistics=True).double().train()
    loss = step.meta_loss(batch64).loss
    gradient = torch.autograd.grad(loss, list(step.parameters()))

    tasks, support_size = batch64.support_x.shape[:2]
    images = torch.cat([batch64.support_x.flatten(0, 1), batch64.query_x.flatten(0, 1)])
    features = encoder(images)
    support = features[: tasks * support_size].unflatten(0, (tasks, support_size))
    queries = features[tasks * support_size :].unflatten(0, (tasks, -1))
    expected_logits = []
    for task in range(tasks):
        prototypes = fewsight.algorithms.predictor.class_means(support[task], batch64.support_y[task], 5)
        prototypes = torch.nn.functional.normalize(prototypes, dim=-1)
        cosines = torch.nn.functional.normalize(queries[task], dim=-1) @ prototypes.T
        expected_logits.append(step.temperature * cosines)
    expected_logits = torch.stack(expected_logits)
    expected_loss = F.cross_entropy(expected_logits.flatten(0, 1), batch64.query_y.flatten())
    expected_gradient = torch.autograd.grad(expected_loss, list(step.parameters()))

    torch.testing.assert_close(step.query_logits(batch64), expected_logits)
    torch.testing.assert_close(loss, expected_loss)
    for got, want in zip(gradient, expected_gradient, strict=True):
        torch.testing.assert_close(got, want)

    torch.manual_seed(0)
    ours = fewsight.ProtoNet(Conv4(None), step_statistics=True).double()
    per_task = fewsight.ProtoNet(ours.encoder).double()
    assert not torch.allclose(ours.train().query_logits(batch64), per_task.train().query_logits(batch64))
    torch.testing.assert_close(ours.eval().query_logits(batch64), per_task.eval().query_logits(batch64))


def test_step_statistics_in_groups_of_tasks_normalise_each_group_as_one_batch(omniglot_train, tmp_path):
    """--step-statistics-tasks 2 of 4 tasks (Meta-Baseline's stage on 2 GPUs): float64 logits and
    meta-gradient equal those of two step-statistics batches of 2 tasks each."""
    sampler = fewsight.EpisodeSampler(omniglot_train, ways=5, shots=1, queries=2, dtype=torch.float64)
    batch = sampler.sample(4, sampler.generator(0))
    torch.manual_seed(0)
    grouped = fewsight.ProtoNet(Conv4(None), step_statistics=True, step_statistics_tasks=2).double().train()
    whole = fewsight.ProtoNet(grouped.encoder, step_statistics=True).double().train()
    halves = [batch.tasks_between(0, 2), batch.tasks_between(2, 4)]
    expected = torch.cat([whole.query_logits(half) for half in halves])
    torch.testing.assert_close(grouped.query_logits(batch), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(whole.query_logits(batch), expected)  # all 4 as one batch differ
    leaves = list(grouped.encoder.parameters())
    gradient = torch.autograd.grad(grouped.meta_loss(batch).loss, leaves)
    mean = sum(whole.meta_loss(half).loss for half in halves) / 2
    for got, want in zip(gradient, torch.autograd.grad(mean, leaves), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    torch_norm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    with pytest.raises(
        fewsight.FewsightError, match=r"convert the encoder with fewsight\.nets\.replace_batchnorm"
    ):
        fewsight.ProtoNet(torch_norm, step_statistics=True, step_statistics_tasks=2)

    from tests.test_inputs import assert_clear_error, run_cli

    flags = ["train", "--algorithm", "protonet", "--meta-batch", "4", "--out", str(tmp_path / "bad")]
    for wrong in (["--step-statistics-tasks", "2"], ["--step-statistics", "--step-statistics-tasks", "3"]):
        status, _, err = run_cli([*flags, *wrong])
        assert_clear_error(status, err)
        assert "--step-statistics-tasks needs --step-statistics and must divide --meta-batch 4" in err


@pytest.mark.parametrize("group", [0, 2])
def test_step_statistics_in_channels_last_give_the_same_logits_and_gradient(omniglot_train, group):
    """The stage's images go to the encoder channels-last (as pre-training's, for speed): a ResNet-12's
    float64 logits and meta-gradient equal those in the standard layout, with all of a step's tasks as
    one batch or in groups, and the layout reaches the encoder."""
    sampler = fewsight.EpisodeSampler(omniglot_train, ways=5, shots=1, queries=2, dtype=torch.float64)
    batch = sampler.sample(4, sampler.generator(1))
    tint = torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1)  # three channels, as photos (one fits either layout)
    batch = dataclasses.replace(batch, support_x=batch.support_x * tint, query_x=batch.query_x * tint)
    torch.manual_seed(0)
    encoder = ResNet12(None, width=0.125)
    learner = fewsight.ProtoNet(encoder, metric="cosine", step_statistics=True, step_statistics_tasks=group)
    learner.double().train()
    layouts = []
    learner.encoder.register_forward_pre_hook(
        lambda _, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    results = {}
    for channels_last in (False, True):
        learner.channels_last = channels_last
        logits = learner.query_logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        results[channels_last] = (logits, torch.autograd.grad(loss, list(learner.parameters())))
    assert layouts == [False] * (len(layouts) // 2) + [True] * (len(layouts) // 2)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-12, atol=1e-12)
    for got, want in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
