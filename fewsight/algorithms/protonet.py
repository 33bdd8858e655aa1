"""Prototypical networks (Snell et al. 2017): each class is the mean of its support embeddings, and
a query's logits are its negative squared distances to these prototypes. As parameter prediction in
its simplest form: class weights 2·m_c and biases -|m_c|² from the class means m_c.

With metric="cosine", the logits are instead a learned temperature times the cosine similarity of
query and prototype: Meta-Baseline's classifier (Chen et al. 2021), whose meta-training fine-tunes a
pre-trained backbone (`fewsight pretrain`, then `fewsight train --metric cosine --init RUN`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means
from fewsight.errors import FewsightError

METRICS = ("euclidean", "cosine")
INITIAL_TEMPERATURE = 10.0  # Meta-Baseline's: cosines in [-1, 1] alone give too flat a softmax


class ProtoNet(ParameterPredictor):
    """Prototypical networks over any `encoder` mapping images to features (B, D).

    metric: "euclidean" (negative squared distances) or "cosine" (temperature · cosine similarity,
    the temperature a parameter of the learner, starting at 10).
    """

    def __init__(self, encoder: nn.Module, transductive: bool = True, metric: str = "euclidean") -> None:
        super().__init__(encoder, transductive)
        if metric not in METRICS:
            raise FewsightError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        self.metric = metric
        if metric == "cosine":  # only then, so Euclidean checkpoints, older ones included, fit as before
            self.temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        return {"prototypes": class_means(self.embed(support_x), support_y, ways)}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        features = self.embed(x, support_x)
        if self.metric == "cosine":
            cosines = F.normalize(features, dim=-1) @ F.normalize(head["prototypes"], dim=-1).T
            return self.temperature * cosines
        return -(features.unsqueeze(1) - head["prototypes"]).pow(2).sum(-1)

    def with_metric(self, metric: str) -> ProtoNet:
        """This learner's encoder under another metric, to score one backbone both ways; a new
        temperature starts at 10, which changes no prediction (a positive scale keeps the nearest class)."""
        if metric == self.metric:
            return self
        weight = next(self.encoder.parameters())
        other = ProtoNet(self.encoder, self.transductive, metric).to(weight.device, weight.dtype)
        return other.train(self.training)
