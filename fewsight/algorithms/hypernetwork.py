"""A task-conditioned hypernetwork in the spirit of CNAPs (Requeima et al. 2019): a permutation-
invariant set encoder reads the whole support set and outputs a feature-wise scale and shift for
every block of the backbone, so that the backbone itself is conditioned on the task; the head's
weights are then predicted from the class means of the conditioned features. No inner-loop
gradients: one forward pass adapts the model to a task."""

from __future__ import annotations

import torch
from torch import nn

from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means
from fewsight.nets import Conv4, ResNet12


class TaskHypernetwork(ParameterPredictor):
    """FiLM-conditioned backbone plus a predicted linear head.

    Args:
        backbone: the Conv4 or ResNet12 (with `ways=None`) whose blocks are conditioned.
        task_encoder: a Conv4 (with `ways=None`) that maps images to feature maps; their mean over
            the support set and over positions, (E,) for E channels, is the task's representation (a
            set encoder: invariant to the order of the support images). Averaging over positions
            keeps E as small on 84x84 images as on 28x28 ones: an Adam step moves a FiLM scale by
            about the learning rate times its inputs' summed size, and with 800 inputs one step took
            the scales from 1 to 0.38.
    """

    def __init__(self, backbone: Conv4 | ResNet12, task_encoder: Conv4, transductive: bool = True) -> None:
        super().__init__(backbone, transductive)
        self.task_encoder = task_encoder
        task_size = task_encoder.channels
        self.films = nn.ModuleList(nn.Linear(task_size, 2 * c) for c in backbone.block_channels)
        size = backbone.feature_size
        self.weight_correction = nn.Sequential(nn.Linear(size, size), nn.ReLU(), nn.Linear(size, size))
        self.bias_correction = nn.Sequential(nn.Linear(size, size), nn.ReLU(), nn.Linear(size, 1))
        for generator in [*self.films, self.weight_correction[-1], self.bias_correction[-1]]:
            nn.init.zeros_(generator.weight)  # start as prototypical networks on an unconditioned backbone
            nn.init.zeros_(generator.bias)

    def _films(self, task: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each block's FiLM scale, bounded to (0.5, 1.5), and shift, bounded to (-0.5, 0.5).

        Unbounded, on miniImageNet the first steps' huge prototype logits drove the shifts negative
        until every ReLU was off: the loss sat at ln(ways) for good. Bounded, the generators can
        only modulate the features, never switch them off; near zero the bounds are the identity.
        """
        scales_shifts = [film(task).chunk(2) for film in self.films]
        return [(1 + 0.5 * torch.tanh(scale), 0.5 * torch.tanh(shift)) for scale, shift in scales_shifts]

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        features = self.task_encoder(support_x).unflatten(1, (self.task_encoder.channels, -1))
        task = features.mean((0, 2))  # (E,): the permutation-invariant set encoding
        films = self._films(task)
        means = class_means(self.encoder.features(support_x, films=films), support_y, ways)
        # Prototypical networks' head (2·m, -|m|²) plus learned corrections.
        weights = 2 * means + self.weight_correction(means)
        bias = -means.pow(2).sum(-1) + self.bias_correction(means).squeeze(-1)
        return {"task": task, "weights": weights, "bias": bias}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        films = self._films(head["task"])
        if self.transductive:
            features = self.encoder.features(x, films=films)
        else:
            joint = torch.cat([support_x, x])
            features = self.encoder.features(joint, support_x.shape[0], films)[support_x.shape[0] :]
        return features @ head["weights"].T + head["bias"] - features.pow(2).sum(-1, keepdim=True)
