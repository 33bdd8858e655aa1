"""Weight prediction from activations (Qiao et al., CVPR 2018): a learned map φ turns the mean
support activation of each class into that class's weights of a cosine-similarity classifier.

The paper's option of mixing in base-class training: with `base_classes` > 0 the learner also keeps
a weight vector for every training class, and during meta-training each class of a task uses its
stored base weights instead of the predicted ones with probability `base_mix`; both are trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError


class WeightPrediction(ParameterPredictor):
    """Class weights w_c = φ(mean activation of class c); logits = scale · cos(features, w_c).

    Args:
        encoder: maps images to features (B, feature_size).
        feature_size: D, the encoder's output size.
        base_classes: training classes with stored weights (0: none, purely episodic).
        base_mix: probability of using a class's stored weights during meta-training.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_size: int,
        base_classes: int = 0,
        base_mix: float = 0.0,
        transductive: bool = True,
    ) -> None:
        super().__init__(encoder, transductive)
        if not 0 <= base_mix <= 1 or (base_mix > 0 and base_classes < 1):
            raise FewsightError("base_mix must be in [0, 1] and needs base_classes > 0")
        self.predict = nn.Linear(feature_size, feature_size)
        with torch.no_grad():  # start from the identity: weights = class means (imprinting)
            self.predict.weight.copy_(torch.eye(feature_size))
            self.predict.bias.zero_()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.base_mix = base_mix
        self.base_weights = nn.Parameter(torch.randn(base_classes, feature_size) * 0.1)

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        return {"weights": self.predict(class_means(self.embed(support_x), support_y, ways))}

    def mix_heads(self, heads: Head, batch: TaskBatch) -> Head:
        if self.base_mix == 0 or batch.classes is None:
            return heads
        use_base = torch.rand(batch.classes.shape, device=batch.classes.device) < self.base_mix
        mixed = torch.where(use_base.unsqueeze(-1), self.base_weights[batch.classes], heads["weights"])
        return {**heads, "weights": mixed}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.embed(x, support_x), dim=-1)
        return self.scale * features @ F.normalize(head["weights"], dim=-1).T
