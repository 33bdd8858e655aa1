"""Population statistics for batch norm: the mean and variance of every TaskBatchNorm's input over a
set of images, then fixed, as torch's running statistics are at evaluation time.

fewsight's batch norm otherwise normalises with each task's own statistics (transductive) or its
support set's. With population statistics every image is normalised on its own: the non-transductive
protocol of RFS and Meta-Baseline for pre-trained backbones (`fewsight eval RUN --norm population`).
The statistics are those of the inputs each layer sees with batch statistics, as running statistics
are gathered while training.
"""

from __future__ import annotations

import torch
from torch import nn

from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import TaskBatchNorm


def estimate_population_statistics(network: nn.Module, images: torch.Tensor, batch_size: int = 128) -> None:
    """Set the population statistics of every TaskBatchNorm in `network` from `images` (M, C, H, W),
    uint8 (scaled to [0, 1]) or float, run through `network` in batches of `batch_size` on the
    network's device, without gradients and in eval mode (no DropBlock)."""
    norms = [module for module in network.modules() if isinstance(module, TaskBatchNorm)]
    if not norms:
        raise FewsightError("this network has no fewsight batch norm to give population statistics")
    if len(images) < 2:
        raise FewsightError("population statistics need at least 2 images")
    for norm in norms:  # gather with batch statistics, as while training
        norm.population_mean = norm.population_var = None
    sums: dict[TaskBatchNorm, list[torch.Tensor]] = {}

    def accumulate(module: TaskBatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        dims = [0, *range(2, x.ndim)]
        count = torch.tensor(x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
        totals = [x.sum(dims), x.square().sum(dims), count]
        earlier = sums.get(module, [0, 0, 0])
        sums[module] = [a + b for a, b in zip(earlier, totals, strict=True)]

    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    handles = [norm.register_forward_pre_hook(accumulate) for norm in norms]
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].to(device)
                network(batch / 255.0 if batch.dtype == torch.uint8 else batch)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    for norm in norms:
        total, squares, count = sums[norm]
        mean = total / count
        dtype = norm.weight.dtype
        norm.population_var = (squares / count - mean.square()).clamp(min=0).to(dtype)
        norm.population_mean = mean.to(dtype)
