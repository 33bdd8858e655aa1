"""The vectorised inner loop against the plain per-task reference, in float64."""

from copy import deepcopy as copy_module

import pytest
import torch

from fewsight.algorithms import ANIL, MAML, MetaSGD, Reptile
from fewsight.data import EpisodeSampler
from fewsight.nets import Conv4
from tests.conftest import assert_meta_training_lowers_the_loss

VARIANTS = {
    "maml": (MAML, {"steps": 2}),
    "fomaml": (MAML, {"steps": 2, "first_order": True}),
    "metasgd": (MetaSGD, {"steps": 2}),
    "anil": (ANIL, {"steps": 2}),
    "maml-non-transductive": (MAML, {"steps": 2, "transductive": False}),
}


@pytest.fixture(scope="module")
def batch64(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=2, dtype=torch.float64)
    return sampler.sample(3, sampler.generator(0))


def meta_gradient(learner, batch):
    loss = learner.meta_loss(batch).loss
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(learner.parameters()))])


@pytest.mark.parametrize("variant", VARIANTS)
def test_vmap_meta_gradient_equals_per_task_reference(batch64, variant):
    algorithm, options = VARIANTS[variant]
    torch.manual_seed(0)
    model = Conv4(5).double()
    vectorised = meta_gradient(algorithm(model, inner_lr=0.4, per_task=False, **options), batch64)
    reference = meta_gradient(algorithm(model, inner_lr=0.4, per_task=True, **options), batch64)
    relative = (vectorised - reference).norm() / reference.norm()
    assert relative < 1e-9, f"{variant}: relative error {relative:.1e}"


def test_first_order_drops_second_order_terms(batch64):
    torch.manual_seed(0)
    model = Conv4(5).double()
    second = meta_gradient(MAML(model, steps=2), batch64)
    first = meta_gradient(MAML(model, steps=2, first_order=True), batch64)
    assert torch.isfinite(first).all()
    assert (second - first).norm() / second.norm() > 1e-3


def test_anil_adapts_only_the_head(batch64):
    learner = ANIL(Conv4(5).double())
    assert learner.adapted == ["head.weight", "head.bias"]
    support_x, support_y = batch64.support_x[0], batch64.support_y[0]
    adapted = learner.adapt(support_x, support_y).params
    for name, value in learner.model.named_parameters():
        assert torch.equal(adapted[name], value) == (name not in learner.adapted)


@pytest.mark.parametrize("transductive", [True, False])
def test_adapted_classifier_matches_batched_query_logits(batch64, transductive):
    learner = MAML(Conv4(5).double(), steps=1, eval_steps=2, transductive=transductive).eval()
    with torch.no_grad():
        batched = learner.query_logits(batch64)
    one = batch64.task(1)
    classifier = learner.adapt(one.support_x[0], one.support_y[0])
    torch.testing.assert_close(classifier(one.query_x[0]), batched[1])


def test_non_transductive_queries_are_classified_independently(batch64):
    learner = MAML(Conv4(5).double(), transductive=False).eval()
    classifier = learner.adapt(batch64.support_x[0], batch64.support_y[0])
    queries = batch64.query_x[0]
    torch.testing.assert_close(classifier(queries)[:1], classifier(queries[:1]))


@pytest.mark.parametrize("variant", ["maml", "metasgd", "anil"])
def test_a_few_meta_steps_lower_the_loss(omniglot_train, variant):
    algorithm, _ = VARIANTS[variant]
    torch.manual_seed(0)
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=5)
    assert_meta_training_lowers_the_loss(algorithm(Conv4(5), inner_lr=0.4), sampler)


def test_reptile_meta_gradient_is_the_pull_towards_the_adapted_weights(batch64):
    torch.manual_seed(0)
    model = Conv4(5).double()
    learner = Reptile(model, inner_lr=0.1, steps=3)
    learner.meta_loss(batch64).loss.backward()
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for task in range(batch64.tasks):  # plain SGD on a copy, one task at a time
        copy = copy_module(model)
        x = torch.cat([batch64.support_x[task], batch64.query_x[task]])
        y = torch.cat([batch64.support_y[task], batch64.query_y[task]])
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(copy(x), y).backward()
            optimizer.step()
        for (name, initial), adapted in zip(model.named_parameters(), copy.parameters(), strict=True):
            expected[name] += (initial.detach() - adapted.detach()) / batch64.tasks
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12)
