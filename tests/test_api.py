"""The Python API over users' own modules and data."""

import warnings

import pytest
import torch
from torch import nn

import fewsight
from fewsight.nets import replace_batchnorm


class Unusual(nn.Module):
    """No batch norm, an extra buffer, a residual block, dropout off for determinism."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor(0.1))
        self.stem = nn.Conv2d(1, 8, 3, stride=4, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1))
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.tanh(self.stem(x - self.offset))
        return self.out((x + self.block(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def batch(omniglot_train):
    sampler = fewsight.EpisodeSampler(omniglot_train, 5, 1, 2, dtype=torch.float64)
    return sampler.sample(3, sampler.generator(0))


def gradient(learner, batch):
    loss = learner.meta_loss(batch).loss
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(learner.parameters()))])


@pytest.mark.parametrize("algorithm", [fewsight.MAML, fewsight.MetaSGD, fewsight.ANIL])
def test_unusual_user_model_vectorises_and_matches_the_reference(batch, algorithm):
    torch.manual_seed(0)
    model = Unusual().double()
    vectorised = algorithm(model, steps=2, per_task=False)
    fast = gradient(vectorised, batch)
    assert vectorised.per_task is False
    reference = gradient(algorithm(model, steps=2, per_task=True), batch)
    assert (fast - reference).norm() / reference.norm() < 1e-9


def torch_batchnorm_model():
    layers = [nn.Conv2d(1, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(392, 5)]
    return nn.Sequential(*layers).double()


def test_model_torch_func_cannot_take_falls_back_with_a_warning(batch):
    torch.manual_seed(0)
    model = torch_batchnorm_model()
    learner = fewsight.MAML(model, steps=2)
    with pytest.warns(UserWarning, match="falling back to a loop over tasks"):
        fallback = gradient(learner, batch)
    assert learner.per_task is True
    reference = gradient(fewsight.MAML(model, steps=2, per_task=True), batch)
    torch.testing.assert_close(fallback, reference)
    classifier = learner.eval().adapt(batch.support_x[0], batch.support_y[0])
    assert classifier(batch.query_x[0]).shape == (10, 5)


def test_replace_batchnorm_makes_the_model_vectorisable(batch):
    torch.manual_seed(0)
    model = torch_batchnorm_model()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
    replaced = replace_batchnorm(model)
    assert isinstance(replaced[1], fewsight.TaskBatchNorm) and isinstance(model[1], nn.BatchNorm2d)
    assert replaced[1].weight.dtype == torch.float64
    x = batch.query_x[0]
    torch.testing.assert_close(replaced(x), model.train()(x))
    learner = fewsight.MAML(replaced, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = gradient(learner, batch)
    reference = gradient(fewsight.MAML(replaced, steps=2, per_task=True), batch)
    assert (fast - reference).norm() / reference.norm() < 1e-9


def test_episodes_from_tensors_and_from_any_indexable_dataset():
    images = torch.rand(60, 3, 8, 8)
    labels = torch.tensor([7, 3, 11] * 20)
    data = fewsight.LabelledImages.from_tensors(images, labels)
    assert data.class_names == ["3", "7", "11"]
    batch = fewsight.EpisodeSampler(data, 3, 2, 4).sample(5, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (5, 6, 3, 8, 8)
    assert batch.support_x.dtype == torch.float32 and batch.support_x.max() <= 1

    class Pairs:  # any indexable data set of (image, label), like torchvision's ImageFolder
        classes = ("cat", "dog")

        def __len__(self):
            return 10

        def __getitem__(self, index):
            return (torch.full((1, 4, 4), index, dtype=torch.uint8), index % 2)

    pairs = fewsight.LabelledImages.from_dataset(Pairs())
    assert pairs.class_names == ["cat", "dog"] and pairs.images.shape == (10, 1, 4, 4)
    assert torch.equal(pairs.labels, torch.arange(10) % 2)


def test_api_and_cli_give_the_same_meta_gradient(omniglot_train):
    from fewsight.run.build import build_learner
    from fewsight.run.config import RunConfig

    config = RunConfig(ways=5, seed=3)
    torch.manual_seed(config.seed)
    from_cli = build_learner(config)
    torch.manual_seed(3)
    from_api = fewsight.MAML(fewsight.Conv4(ways=5), inner_lr=0.4, steps=1, eval_steps=3)
    sampler = fewsight.EpisodeSampler(omniglot_train, 5, 1, 3)
    tasks = sampler.sample(4, sampler.generator(3))
    a, b = gradient(from_cli, tasks), gradient(from_api, tasks)
    assert torch.equal(a, b) and a.abs().sum() > 0
