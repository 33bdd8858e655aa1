import pytest
import torch

from fewsight.data import EpisodeSampler, LabelledImages
from fewsight.data.episodes import fixed_batch_spans, fixed_batches
from fewsight.errors import FewsightError


def test_batch_shapes_and_labels(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=2, queries=3)
    batch = sampler.sample(4, sampler.generator(0))
    assert batch.support_x.shape == (4, 10, 1, 28, 28)
    assert batch.query_x.shape == (4, 15, 1, 28, 28)
    assert batch.support_x.dtype == torch.float32
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    assert torch.equal(batch.support_y[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    assert torch.equal(batch.query_y[0], torch.arange(5).repeat_interleave(3))


def test_tasks_draw_distinct_classes_and_images(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=4)
    _, indices = sampler._draw_indices(64, torch.Generator().manual_seed(3))
    classes = omniglot_train.labels[indices]  # (T, N, K+Q)
    assert (classes == classes[..., :1]).all(), "a label mixes classes"
    per_task = classes[..., 0]
    assert all(len(set(task.tolist())) == 5 for task in per_task)
    assert all(len(set(task.flatten().tolist())) == 25 for task in indices), "an image repeats"
    # Labels are permuted per task: the class behind label 0 varies between tasks.
    assert len(set(per_task[:, 0].tolist())) > 32


def test_same_seed_same_tasks(omniglot_train):
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=1)
    first = sampler.sample(3, sampler.generator(7))
    again = sampler.sample(3, sampler.generator(7))
    other = sampler.sample(3, sampler.generator(8))
    assert torch.equal(first.support_x, again.support_x)
    assert not torch.equal(first.support_x, other.support_x)
    fixed = [b.query_x for b in sampler.fixed_episodes(10, 4, seed=0)]
    assert [len(b) for b in fixed] == [4, 4, 2]
    again = sampler.fixed_episodes(10, 4, seed=0)
    assert all(torch.equal(a, b.query_x) for a, b in zip(fixed, again, strict=True))


def test_fixed_episodes_do_not_depend_on_the_batch(omniglot_train):
    """Evaluating fewer episodes at once (to save memory) scores the very same episodes."""
    sampler = EpisodeSampler(omniglot_train, ways=5, shots=1, queries=1)
    for batch in (7, 50, 64):
        drawn = list(sampler.fixed_episodes(120, batch, seed=3))
        assert len(drawn) == fixed_batches(120, batch)
        spans = fixed_batch_spans(120, batch)  # which episodes each meta-batch holds
        assert [len(b.query_x) for b in drawn] == [len(span) for span in spans]
        assert [n for span in spans for n in span] == list(range(120))
        assert max(len(b.query_x) for b in drawn) <= batch
        queries = torch.cat([b.query_x for b in drawn])
        if batch == 7:
            reference = queries
        assert queries.shape[0] == 120 and torch.equal(queries, reference)
    shards = [list(sampler.fixed_episodes(120, 7, seed=3, shard=(rank, 2))) for rank in (0, 1)]
    assert sum(len(s) for s in shards) == fixed_batches(120, 7)


def test_uneven_classes_use_only_those_large_enough():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 6 + [3] * 4)
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).contiguous()
    sampler = EpisodeSampler(LabelledImages(images, labels, list("abcd")), ways=3, shots=2, queries=2)
    batch = sampler.sample(50, sampler.generator(0))
    drawn = set((batch.support_x * 255).round().long().unique().tolist())
    assert drawn == {0, 2, 3}
    for task in range(50):  # every image of a label comes from one class
        for label in range(3):
            values = (batch.support_x[task][batch.support_y[task] == label] * 255).round().unique()
            assert len(values) == 1


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "message"),
    [
        (5000, 1, 1, "need 5000 classes"),
        (5, 10, 11, "at least 21 images"),
        (1, 1, 1, "ways must be at least 2"),
    ],
)
def test_impossible_settings_name_the_fix(omniglot_train, ways, shots, queries, message):
    with pytest.raises(FewsightError, match=message):
        EpisodeSampler(omniglot_train, ways, shots, queries)
