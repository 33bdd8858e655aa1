"""Episodes: meta-batches of N-way K-shot tasks drawn by indexing tensors that live on the device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fewsight.data.images import LabelledImages
from fewsight.errors import FewsightError

FIXED_DRAW = 50  # fixed episodes are drawn this many at a time, so a seed's episodes do not depend on
# how many are evaluated at once (and equal those of earlier versions, which drew them in batches of 50)


@dataclass
class TaskBatch:
    """T tasks of N ways: support (T, N*K, C, H, W) with labels (T, N*K), query (T, N*Q, ...).

    Labels are 0..N-1; which class gets which label is random in every task. `classes` (T, N), when
    known, holds the sampler's index of the class behind each label (for base-class training).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor | None = None

    @property
    def ways(self) -> int:
        """N, read from the shapes when the classes are known (no device sync), else the labels."""
        if self.classes is not None:
            return self.classes.shape[1]
        return int(self.support_y.max()) + 1

    @property
    def tasks(self) -> int:
        return self.support_x.shape[0]

    def task(self, index: int) -> TaskBatch:
        """Task `index` alone, as a batch of one."""
        return self.tasks_between(index, index + 1)

    def tasks_between(self, start: int, stop: int) -> TaskBatch:
        """Tasks start..stop-1, as a batch of their own (the classes too, when known)."""
        part = slice(start, stop)
        classes = None if self.classes is None else self.classes[part]
        return TaskBatch(
            self.support_x[part], self.support_y[part], self.query_x[part], self.query_y[part], classes
        )


class EpisodeSampler:
    """Draws N-way K-shot tasks with Q queries per class from labelled images.

    The images stay on `device` as they are given (uint8 is best: a quarter of the memory); a
    meta-batch is gathered with one indexing operation and converted to `dtype` (uint8 scaled to
    [0, 1]). Only classes with at least K+Q images take part.
    """

    def __init__(
        self,
        data: LabelledImages,
        ways: int,
        shots: int,
        queries: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if ways < 2 or shots < 1 or queries < 1:
            raise FewsightError("ways must be at least 2, shots and queries at least 1")
        counts = data.images_per_class()
        eligible = torch.nonzero(counts >= shots + queries).flatten()
        if len(eligible) < ways:
            most = int(counts.max()) if len(counts) else 0
            raise FewsightError(
                f"{ways}-way tasks with {shots} shots + {queries} queries need {ways} classes of at "
                f"least {shots + queries} images, but this split has {len(eligible)} such classes "
                f"(most images in a class: {most}); lower --ways, --shots or --queries"
            )
        self.ways, self.shots, self.queries = ways, shots, queries
        self.device, self.dtype = torch.device(device), dtype
        self.images = data.images.to(self.device)
        order = torch.argsort(data.labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts[eligible].max())
        position = torch.arange(width)
        table = starts[eligible, None] + position  # (classes, width) index into images by class
        self.counts = counts[eligible]
        self.same_counts = bool((self.counts == self.counts[0]).all())
        self.table = order[table.clamp(max=len(order) - 1)].to(self.device)
        self.counts = self.counts.to(self.device)
        labels = torch.arange(ways, device=self.device)
        self.support_labels = labels.repeat_interleave(shots)
        self.query_labels = labels.repeat_interleave(queries)

    @property
    def num_classes(self) -> int:
        """Classes that take part (those with at least K+Q images)."""
        return len(self.counts)

    def _draw_indices(self, tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Classes (T, N) and image indices (T, N, K+Q), drawn without replacement."""
        device = generator.device
        table, counts = self._on(device)
        # The k smallest of uniform scores are a uniform k-subset in random order; topk finds them
        # with fewer kernels than a full argsort.
        classes = torch.rand(tasks, len(counts), generator=generator, device=device)
        classes = classes.topk(self.ways, dim=1, largest=False).indices
        scores = torch.rand(tasks, self.ways, table.shape[1], generator=generator, device=device)
        if not self.same_counts:  # positions past a class's last image must lose
            positions = torch.arange(table.shape[1], device=device)
            scores = scores.masked_fill(positions >= counts[classes, None], 2.0)
        positions = scores.topk(self.shots + self.queries, dim=2, largest=False).indices
        return classes, table[classes[..., None], positions]

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The class table and counts where the draw happens: kept on the sampler's device, copied only
        for another generator's (fixed episodes are drawn on the CPU, the same on every device)."""
        if self.table.device != device:
            return self.table.to(device), self.counts.to(device)
        return self.table, self.counts

    def _gather(self, classes: torch.Tensor, indices: torch.Tensor) -> TaskBatch:
        tasks = indices.shape[0]
        images = self.images[indices.to(self.device)]
        if self.images.dtype == torch.uint8:  # one kernel: the division promotes to float32
            images = images / 255.0 if self.dtype == torch.float32 else images.to(self.dtype) / 255.0
        else:
            images = images.to(self.dtype)
        support = images[:, :, : self.shots].flatten(1, 2)
        query = images[:, :, self.shots :].flatten(1, 2)
        return TaskBatch(
            support,
            self.support_labels.expand(tasks, -1),
            query,
            self.query_labels.expand(tasks, -1),
            classes.to(self.device),
        )

    def generator(self, seed: int) -> torch.Generator:
        """A random generator on the sampler's device, for `sample`."""
        return torch.Generator(self.device).manual_seed(seed)

    def sample(self, tasks: int, generator: torch.Generator, part: slice | None = None) -> TaskBatch:
        """A meta-batch of `tasks` random tasks, or only its `part` (one process's share of it)."""
        if tasks < 1:
            raise FewsightError(f"a meta-batch needs at least 1 task, not {tasks}")
        classes, indices = self._draw_indices(tasks, generator)
        if part is not None:
            classes, indices = classes[part], indices[part]
        return self._gather(classes, indices)

    def fixed_episodes(
        self, count: int, batch: int, seed: int, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[TaskBatch]:
        """The same `count` tasks for a given seed on any device and at any `batch`, in meta-batches
        of at most `batch`; with `shard` = (rank, processes), only every processes-th meta-batch,
        starting at rank. (Tasks are drawn FIXED_DRAW at a time, whatever the batch.)"""
        if count < 1 or batch < 1:
            raise FewsightError(f"episodes and batch must be at least 1, not {count} and {batch}")
        generator = torch.Generator().manual_seed(seed)
        rank, processes = shard
        number = 0
        for start in range(0, count, FIXED_DRAW):
            classes, indices = self._draw_indices(min(FIXED_DRAW, count - start), generator)
            for first in range(0, len(classes), batch):
                if number % processes == rank:
                    yield self._gather(classes[first : first + batch], indices[first : first + batch])
                number += 1


def fixed_batch_spans(count: int, batch: int) -> list[range]:
    """The episode numbers of each meta-batch `EpisodeSampler.fixed_episodes(count, batch, ...)`
    yields, in its order (rank r of P processes gets the spans r, r + P, ...)."""
    spans = []
    for start in range(0, count, FIXED_DRAW):
        end = min(start + FIXED_DRAW, count)
        spans += [range(first, min(first + batch, end)) for first in range(start, end, batch)]
    return spans


def fixed_batches(count: int, batch: int) -> int:
    """How many meta-batches `EpisodeSampler.fixed_episodes(count, batch, ...)` yields in all."""
    return len(fixed_batch_spans(count, batch))
