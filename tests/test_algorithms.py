"""The vectorised inner loop against the plain per-task reference, in float64."""

import warnings
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


def test_reptile_with_adam_on_mini_batches_matches_plain_steps_on_copies(batch64):
    """Reptile's code: Adam steps (beta1 = 0: lr * g / sqrt(v)) on the next `inner_batch` images of a
    task in a random order; v comes from the squared gradients of the tasks' first steps."""
    torch.manual_seed(0)
    model = Conv4(5).double()
    learner = Reptile(model, inner_lr=1e-3, steps=3, inner_optimizer="adam", inner_batch=4)
    learner.self_check = False
    tasks, count = batch64.tasks, batch64.support_y.shape[1] + batch64.query_y.shape[1]
    torch.manual_seed(1)
    learner.meta_loss(batch64).loss.backward()
    torch.manual_seed(1)
    order = torch.rand(tasks, count).argsort(dim=1)  # the order the learner drew
    copies, batches = [], []
    for task in range(tasks):
        x = torch.cat([batch64.support_x[task], batch64.query_x[task]])
        y = torch.cat([batch64.support_y[task], batch64.query_y[task]])
        picked = order[task, torch.arange(12) % count].view(3, 4)
        batches.append([(x[i], y[i]) for i in picked])
        copies.append(copy_module(model))

    def gradients(copy, x, y):
        copy.zero_grad()
        torch.nn.functional.cross_entropy(copy(x), y).backward()
        return [p.grad.clone() for p in copy.parameters()]

    first = [gradients(copy, *batches[t][0]) for t, copy in enumerate(copies)]
    moments = [torch.stack([g[i] for g in first]).square().mean(0) for i in range(len(first[0]))]
    rates = [1e-3 / (v.sqrt() + 1e-8) for v in moments]  # v after one update: bias-corrected, g^2
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for task, copy in enumerate(copies):
        for step in range(3):
            grads = first[task] if step == 0 else gradients(copy, *batches[task][step])
            with torch.no_grad():
                for p, g, rate in zip(copy.parameters(), grads, rates, strict=True):
                    p -= rate * g
        for total, initial, adapted in zip(expected, model.parameters(), copy.parameters(), strict=True):
            total += (initial.detach() - adapted.detach()) / tasks
    for (name, p), want in zip(model.named_parameters(), expected, strict=True):
        if not name.endswith("conv.bias"):  # before batch norm: its gradient is rounding noise, which
            torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)  # Adam scales up to ~lr
    assert learner.moment_updates.item() == 3 * tasks
    torch.testing.assert_close(learner.second_moment_0, (1 - 0.999 ** (3 * tasks)) * moments[0])


def test_reptile_with_adam_vectorises_and_equals_the_per_task_loop(batch64):
    """The default path passes the self-check (no fallback) and equals the loop over tasks; the biases
    before batch norm are left out, as above."""
    learners = []
    for per_task in (None, True):
        torch.manual_seed(0)
        learner = Reptile(Conv4(5).double(), inner_lr=1e-3, steps=2, inner_optimizer="adam", inner_batch=4)
        learner.per_task = per_task
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            learner.meta_loss(batch64).loss.backward()
        learners.append(learner)
    assert learners[0].per_task is False and learners[0].meta_gradient_error < 1e-9
    vectorised, looped = (dict(learner.named_parameters()) for learner in learners)
    for name, p in vectorised.items():
        if not name.endswith("conv.bias"):
            torch.testing.assert_close(p.grad, looped[name].grad, rtol=1e-9, atol=1e-12)


def test_reptile_keeps_adams_second_moment_in_its_state_and_loads_it(batch64):
    torch.manual_seed(0)
    trained = Reptile(Conv4(5).double(), inner_lr=1e-3, steps=2, inner_optimizer="adam")
    trained.meta_loss(batch64).loss.backward()
    fresh = Reptile(Conv4(5).double(), inner_lr=1e-3, steps=2, inner_optimizer="adam")
    assert all(bool((rate == 1e-3).all()) for rate in fresh.inner_rates(0).values())  # before any step
    fresh.load_state_dict(trained.state_dict())
    for name, rate in trained.inner_rates(0).items():
        torch.testing.assert_close(fresh.inner_rates(0)[name], rate)
    plain = Reptile(Conv4(5).double(), inner_lr=0.1)  # no buffers: old checkpoints load unchanged
    assert set(plain.state_dict()) == set(MAML(Conv4(5)).state_dict())
