"""Initialisations the papers' reference code uses, applied to a fresh backbone (`fewsight train
--weight-init`, `--norm-scale-init`); docs/RESULTS.md measures what each changes."""

from __future__ import annotations

from torch import nn

from fewsight.nets.batchnorm import TaskBatchNorm


def xavier_weights(network: nn.Module) -> None:
    """Convolution and linear weights from Xavier's uniform distribution, biases at zero, as the MAML
    paper's code initialises its Conv4 (torch's default draws both from a narrower range)."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def uniform_scales(network: nn.Module) -> None:
    """Draw every TaskBatchNorm scale from U(0, 1), as PyTorch did before 1.2 and the ProtoNet
    reference code still does (with squared-Euclidean logits the scales act as a temperature)."""
    for module in network.modules():
        if isinstance(module, TaskBatchNorm):
            nn.init.uniform_(module.weight)


def fixed_scales(network: nn.Module) -> None:
    """Every TaskBatchNorm scale at 1 and frozen (neither meta-learned nor adapted), as the batch norm
    of the MAML paper's code, which learns a shift only."""
    for module in network.modules():
        if isinstance(module, TaskBatchNorm):
            nn.init.ones_(module.weight)
            module.weight.requires_grad_(False)
