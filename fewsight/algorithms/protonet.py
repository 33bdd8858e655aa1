"""Prototypical networks (Snell et al. 2017): each class is the mean of its support embeddings, and
a query's logits are its negative squared distances to these prototypes. As parameter prediction in
its simplest form: class weights 2·m_c and biases -|m_c|² from the class means m_c."""

from __future__ import annotations

import torch

from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means


class ProtoNet(ParameterPredictor):
    """Prototypical networks over any `encoder` mapping images to features (B, D)."""

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        return {"prototypes": class_means(self.embed(support_x), support_y, ways)}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        features = self.embed(x, support_x)
        return -(features.unsqueeze(1) - head["prototypes"]).pow(2).sum(-1)
