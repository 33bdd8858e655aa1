"""Population statistics for batch norm: the mean and variance of every TaskBatchNorm's input over a
set of images, then fixed, as torch's running statistics are at evaluation time.

fewsight's batch norm otherwise normalises with each task's own statistics (transductive) or its
support set's. With population statistics every image is normalised on its own: the non-transductive
protocol of RFS and Meta-Baseline for pre-trained backbones (`fewsight eval RUN --norm population`).
The statistics are those of the inputs each layer sees with batch statistics, as running statistics
are gathered while training. A run folder can keep them in population.pt (`fewsight eval RUN --norm
population --keep-statistics`); the model then uses them wherever it is loaded, unless told otherwise.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import POPULATION_BUFFERS, TaskBatchNorm
from fewsight.run.files import serialise, write_atomic

STATISTICS_FILE = "population.pt"


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


def has_population_statistics(network: nn.Module) -> bool:
    """Whether the network's batch norms normalise with fixed statistics."""
    return any(isinstance(m, TaskBatchNorm) and m.population_mean is not None for m in network.modules())


def weights_digest(network: nn.Module) -> str:
    """A short fingerprint of the network's learned weights, which its statistics belong to."""
    digest = hashlib.sha256()
    for name, value in sorted(network.state_dict().items()):
        if not name.endswith(POPULATION_BUFFERS):
            digest.update(name.encode())
            digest.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_population_statistics(network: nn.Module, folder: Path) -> Path:
    """Write the network's population statistics into FOLDER/population.pt, with the fingerprint of
    the weights they were estimated for."""
    state = {k: v.cpu() for k, v in network.state_dict().items() if k.endswith(POPULATION_BUFFERS)}
    if not state:
        raise FewsightError("this network has no population statistics to keep; estimate them first")
    path = Path(folder) / STATISTICS_FILE
    write_atomic(serialise({"statistics": state, "weights": weights_digest(network)}), path)
    return path


def load_population_statistics(network: nn.Module, folder: Path) -> bool:
    """Set the network's population statistics from FOLDER/population.pt if it has one estimated for
    these weights (a warning says when it was estimated for others, e.g. the run trained on since)."""
    path = Path(folder) / STATISTICS_FILE
    if not path.is_file():
        return False
    device = next(network.parameters()).device
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved["weights"] != weights_digest(network):
            warnings.warn(
                f"{path} holds the statistics of other weights than these, so they are not used; "
                "estimate them again with fewsight eval RUN --norm population --keep-statistics",
                stacklevel=2,
            )
            return False
        network.load_state_dict({**network.state_dict(), **saved["statistics"]})
    except (KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as error:
        raise FewsightError(
            f"{path} is not population statistics of this model ({error.__class__.__name__}); delete it, "
            "or estimate them again with fewsight eval RUN --norm population --keep-statistics"
        ) from error
    return True
