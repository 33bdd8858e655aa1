"""Latent embedding optimisation (LEO, Rusu et al. 2019): encode the support set into a
low-dimensional latent code per class, decode classifier weights from it, and adapt by gradient
steps in the latent space rather than in the weights: the bridge between the two families.

Simplifications, documented: the features are learned jointly with a Conv4 (the paper uses fixed
pre-trained WRN-28-10 features); the relation network sees each class's mean encoding beside the
task's mean (the paper compares all pairs of support examples); there is no final fine-tuning of
the decoded weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.algorithms.base import MetaLoss
from fewsight.algorithms.predictor import Head, ParameterPredictor, class_means
from fewsight.data.episodes import TaskBatch


def _gaussian_sample(parameters: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample (or the mean) of N(mean, std²) from its parameters [mean, raw std], and KL to N(0, I)."""
    mean, raw_std = parameters.chunk(2, dim=-1)
    std = F.softplus(raw_std) + 1e-4
    value = mean + std * torch.randn_like(std) if sample else mean
    kl = 0.5 * (mean.pow(2) + std.pow(2) - 1).sum() - std.log().sum()
    return value, kl


def _unscaled_if_older(module, state_dict, prefix, *args) -> None:
    """Load a LEO saved before its decoded weights were scaled with the scale it was trained with (1)."""
    state_dict.setdefault(prefix + "weight_scale", torch.tensor(1.0))


class LEO(ParameterPredictor):
    """Per-class latent codes z_c (size `latent`) -> decoded head weights; `steps` latent steps.

    The inner step size is meta-learned. The meta-loss adds `kl_weight` · KL(q(z | S) ‖ N(0, I)) and
    `encoder_penalty` · |z' - z|² (adapted against initial codes, z' held fixed) to the query loss.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_size: int,
        latent: int = 64,
        steps: int = 5,
        inner_lr: float = 1.0,
        kl_weight: float = 1e-3,
        encoder_penalty: float = 1e-9,
        transductive: bool = True,
    ) -> None:
        super().__init__(encoder, transductive)
        self.steps, self.kl_weight, self.encoder_penalty = steps, kl_weight, encoder_penalty
        self.encode = nn.Linear(feature_size, latent)
        self.relation = nn.Sequential(
            nn.Linear(2 * latent, 2 * latent), nn.ReLU(), nn.Linear(2 * latent, 2 * latent)
        )
        self.decode = nn.Linear(latent, 2 * feature_size)
        for layer in (self.relation[-1], self.decode):  # start nearly deterministic: small std
            nn.init.constant_(layer.bias[layer.out_features // 2 :], -5.0)
        self.inner_lr = nn.Parameter(torch.tensor(float(inner_lr)))
        # Decoded weights are scaled by 1/sqrt(feature size), so that logits start near unit size
        # whatever the features' width (1,600 on 84x84 images made the latent steps explode). Saved
        # with the weights: runs written before the scale existed load with 1, as they were trained.
        self.register_buffer("weight_scale", torch.tensor(feature_size**-0.5))
        self.register_load_state_dict_pre_hook(_unscaled_if_older)

    def _weights(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, kl = _gaussian_sample(self.decode(codes), sample=self.training)
        return self.weight_scale * weights, kl

    def task_head(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Head:
        features = self.embed(support_x)
        encoded = class_means(self.encode(features), support_y, ways)  # (N, latent)
        context = encoded.mean(0, keepdim=True).expand_as(encoded)
        codes, kl = _gaussian_sample(self.relation(torch.cat([encoded, context], -1)), self.training)

        def support_loss(latent: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(features @ self._weights(latent)[0].T, support_y)

        adapted = codes
        for _ in range(self.steps):
            adapted = adapted - self.inner_lr * torch.func.grad(support_loss)(adapted)
        weights, _ = self._weights(adapted)
        penalty = self.kl_weight * kl + self.encoder_penalty * (adapted.detach() - codes).pow(2).sum()
        return {"weights": weights, "penalty": penalty}

    def task_logits(self, head: Head, x: torch.Tensor, support_x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, support_x) @ head["weights"].T

    def meta_loss(self, batch: TaskBatch) -> MetaLoss:
        heads, logits = self.heads_and_logits(batch)
        result = self._loss_and_accuracy(logits, batch)
        result.loss = result.loss + heads["penalty"].mean()
        return result
