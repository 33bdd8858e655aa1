"""Prototypical networks (Snell et al. 2017): each class is the mean of its support embeddings, and
a query's logits are its negative squared distances to these prototypes. As parameter prediction in
its simplest form: class weights 2·m_c and biases -|m_c|² from the class means m_c.

With metric="cosine", the logits are instead a learned temperature times the cosine similarity of
query and prototype: Meta-Baseline's classifier (Chen et al. 2021), whose meta-training fine-tunes a
pre-trained backbone (`fewsight pretrain`, then `fewsight train --metric cosine --init RUN`).

With joint_statistics=True (transductive only), an episode's support and query images are embedded as
one batch, so batch norm normalises them with their joint statistics, as Snell et al.'s code does;
by default each set is normalised with its own. With step_statistics=True, meta-training embeds every
support and query image of all the step's tasks as one batch, as Meta-Baseline's code does; evaluation
still normalises each task on its own, so a task's score never depends on the tasks beside it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import normalised_in_groups
from fewsight.nets.first_order import first_order
from fewsight.nets.layout import for_convolution

METRICS = ("euclidean", "cosine")
INITIAL_TEMPERATURE = 10.0  # Meta-Baseline's: cosines in [-1, 1] alone give too flat a softmax


class ProtoNet(ParameterPredictor):
    """Prototypical networks over any `encoder` mapping images to features (B, D).

    metric: "euclidean" (negative squared distances) or "cosine" (temperature · cosine similarity,
    the temperature a parameter of the learner, starting at 10).
    joint_statistics: embed each episode's support and query images as one batch (transductive only).
    step_statistics: in training, embed all images of all the step's tasks as one batch (transductive only).
    step_statistics_tasks: with step_statistics, embed the tasks in groups of this many instead, each
    group's images as one batch (0: all), as the images on each GPU under nn.DataParallel; the
    encoder's batch norm must be TaskBatchNorm (`fewsight.nets.replace_batchnorm` makes it so).
    """

    def __init__(
        self,
        encoder: nn.Module,
        transductive: bool = True,
        metric: str = "euclidean",
        joint_statistics: bool = False,
        step_statistics: bool = False,
        step_statistics_tasks: int = 0,
    ) -> None:
        super().__init__(encoder, transductive)
        if metric not in METRICS:
            raise FewsightError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if (joint_statistics or step_statistics) and not transductive:
            raise FewsightError(
                "joint and step statistics are transductive: drop --non-transductive, "
                "or --joint-statistics and --step-statistics"
            )
        self.metric, self.joint_statistics, self.step_statistics = metric, joint_statistics, step_statistics
        self.step_statistics_tasks = step_statistics_tasks
        self.channels_last = True  # the step's images' layout (fewsight.nets.layout); False: as they come
        if step_statistics_tasks and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules()
        ):
            raise FewsightError(
                "--step-statistics-tasks groups fewsight's TaskBatchNorm layers, not torch's batch norm: "
                "convert the encoder with fewsight.nets.replace_batchnorm"
            )
        if metric == "cosine":  # only then, so Euclidean checkpoints, older ones included, fit as before
            self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        return {"prototypes": class_means(self.embed(support_x), support_y, ways)}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        return self.compare(self.embed(x, support_x), head["prototypes"])

    def compare(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) of features (B, D) against the prototypes (N, D) under the metric."""
        if self.metric == "cosine":
            return self.temperature * (F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T)
        return -(features.unsqueeze(1) - prototypes).pow(2).sum(-1)

    def heads_and_logits(self, batch: TaskBatch) -> tuple[Head, torch.Tensor]:
        if self.step_statistics and self.training:
            return self._step_heads_and_logits(batch)
        if not self.joint_statistics:
            return super().heads_and_logits(batch)
        ways = batch.ways

        def one_task(support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> tuple:
            features = self.embed(torch.cat([support_x, query_x]))
            support, queries = features.split([len(support_x), len(query_x)])
            prototypes = class_means(support, support_y, ways)
            return {"prototypes": prototypes}, self.compare(queries, prototypes)

        return torch.vmap(one_task, randomness="different")(batch.support_x, batch.support_y, batch.query_x)

    def _step_heads_and_logits(self, batch: TaskBatch) -> tuple[Head, torch.Tensor]:
        """Every support and query image of the batch's tasks embedded as one batch, so batch norm
        normalises them with the step's statistics (Meta-Baseline's meta-training); with
        step_statistics_tasks, one batch per group of that many tasks (its supports, then its queries)."""
        tasks, support_size = batch.support_x.shape[:2]
        query_size = batch.query_x.shape[1]
        group = self.step_statistics_tasks or tasks
        if tasks % group:
            raise FewsightError(
                f"--step-statistics-tasks {group} must divide the {tasks} tasks a step (on each process)"
            )
        by_group = torch.cat(  # (groups, group * (support + query) images, C, H, W)
            [
                batch.support_x.unflatten(0, (-1, group)).flatten(1, 2),
                batch.query_x.unflatten(0, (-1, group)).flatten(1, 2),
            ],
            dim=1,
        )
        grouped = normalised_in_groups(self.encoder, by_group.shape[1]) if group < tasks else nullcontext()
        with first_order(self.encoder), grouped:  # one derivative: torch's own layers
            images = for_convolution(by_group.flatten(0, 1), self.channels_last)  # as pre-training's
            features = self.embed(images).unflatten(0, (tasks // group, -1))
        support = features[:, : group * support_size].reshape(tasks, support_size, -1)
        queries = features[:, group * support_size :].reshape(tasks, query_size, -1)
        ways = batch.ways
        prototypes = torch.vmap(lambda s, y: class_means(s, y, ways))(support, batch.support_y)
        return {"prototypes": prototypes}, torch.vmap(self.compare)(queries, prototypes)

    def with_metric(self, metric: str) -> ProtoNet:
        """This learner's encoder under another metric, to score one backbone both ways; a new
        temperature starts at 10, which changes no prediction (a positive scale keeps the nearest class)."""
        if metric == self.metric:
            return self
        weight = next(self.encoder.parameters())
        other = ProtoNet(
            self.encoder,
            self.transductive,
            metric,
            self.joint_statistics,
            self.step_statistics,
            self.step_statistics_tasks,
        )
        other = other.to(weight.device, weight.dtype)
        return other.train(self.training)
