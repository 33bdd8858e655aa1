"""Batch norm's statistics at test, Meta-Baseline's code against fewsight, on one model: the running
averages its stage leaves (torch's running mean and unbiased variance, momentum 0.1, over the last
training steps, each step's batch the support and query images of 2 tasks, as on each of the code's
2 GPUs) against fewsight's population statistics (`--norm population`: mean and variance over 10,000
unaugmented training images). Both score the same test episodes with the same features otherwise, so
the paired difference has a tight interval. With fixed statistics an image's features do not depend
on the others', so each test image is embedded once per variant and the episodes drawn from those.

Usage: python benchmarks/running_statistics.py [MODEL] [--steps 40] [--per-class 100]
[--episodes 2000] [--threads 2] [--device cpu]   (MODEL: a run folder or bundled name, miniimagenet)
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.data import EpisodeSampler
from fewsight.data.images import LabelledImages
from fewsight.nets.batchnorm import TaskBatchNorm
from fewsight.run.build import load_split
from fewsight.use.models import load_model

MOMENTUM = 0.1  # torch's default, which the code keeps
WAYS, QUERIES, TASKS_PER_BATCH = 5, 15, 2


def running_statistics(encoder: nn.Module, batches: list[torch.Tensor], momentum: float = MOMENTUM) -> None:
    """Set the fixed statistics of every TaskBatchNorm of `encoder` to the running averages that torch's
    batch norm would hold after training on `batches` (each (B, C, H, W) in [0, 1]), starting from the
    statistics the encoder has: each layer normalised with its batch's statistics, as in training."""
    norms = [module for module in encoder.modules() if isinstance(module, TaskBatchNorm)]
    running = {norm: (norm.population_mean.clone(), norm.population_var.clone()) for norm in norms}

    def update(module: TaskBatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        dims = [0, *range(2, inputs[0].ndim)]
        variance, mean = torch.var_mean(inputs[0].double(), dim=dims, correction=1)  # torch keeps it unbiased
        old_mean, old_variance = running[module]
        running[module] = (
            torch.lerp(old_mean, mean.to(old_mean.dtype), momentum),
            torch.lerp(old_variance, variance.to(old_variance.dtype), momentum),
        )

    for norm in norms:  # batch statistics while gathering, as in training
        norm.population_mean = norm.population_var = None
    handles = [norm.register_forward_pre_hook(update) for norm in norms]
    try:
        with torch.no_grad():
            for batch in batches:
                encoder(batch)
    finally:
        for handle in handles:
            handle.remove()
    for norm in norms:
        norm.population_mean, norm.population_var = running[norm]


def features_of(encoder: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Features (M, D) of uint8 images (M, C, H, W), each normalised with the fixed statistics."""
    with torch.no_grad():
        return torch.cat([encoder(part.float() / 255) for part in images.split(batch_size)])


def first_images(data: LabelledImages, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` images of every class and their labels."""
    chosen = torch.cat(
        [torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(data.num_classes)]
    )
    return data.images[chosen], data.labels[chosen]


def paired_scores(
    features: dict[str, torch.Tensor], labels: torch.Tensor, shots: int, episodes: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Accuracy (episodes,) of cosine nearest-centroid classification for each features' variant on the
    same 5-way episodes (shots and 15 queries a class) drawn from `labels`' classes."""
    generator = torch.Generator().manual_seed(seed)
    classes = int(labels.max()) + 1
    by_class = torch.stack([torch.nonzero(labels == c).flatten() for c in range(classes)])
    scores: dict[str, list[float]] = {name: [] for name in features}
    for _ in range(episodes):
        chosen = by_class[torch.randperm(classes, generator=generator)[:WAYS]]
        picks = torch.stack(
            [row[torch.randperm(len(row), generator=generator)[: shots + QUERIES]] for row in chosen]
        )
        support, queries = picks[:, :shots], picks[:, shots:].flatten()
        truth = torch.arange(WAYS).repeat_interleave(QUERIES)
        for name, values in features.items():
            prototypes = F.normalize(values[support].mean(1), dim=-1)
            predicted = (F.normalize(values[queries], dim=-1) @ prototypes.T).argmax(-1)
            scores[name].append((predicted == truth).double().mean().item())
    return {name: torch.tensor(values) for name, values in scores.items()}


def interval(values: torch.Tensor) -> str:
    """Mean ± the half-width of its 95% interval, in points."""
    return f"{values.mean() * 100:.2f} ± {1.96 * values.std() * 100 / math.sqrt(len(values)):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="miniimagenet")
    parser.add_argument("--steps", type=int, default=40, help="training steps the running averages see")
    parser.add_argument("--per-class", type=int, default=100, help="test images embedded per class")
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, learner = load_model(args.model, args.device)
    encoder = learner.encoder
    test_images, test_labels = first_images(load_split(config, "test"), args.per_class)
    features = {"population": features_of(encoder, test_images.to(args.device)).cpu()}

    sampler = EpisodeSampler(load_split(config, "train"), WAYS, 1, QUERIES, torch.device(args.device))
    generator = sampler.generator(0)
    batches = []
    for _ in range(args.steps):
        tasks = sampler.sample(TASKS_PER_BATCH, generator)
        batches.append(torch.cat([tasks.support_x.flatten(0, 1), tasks.query_x.flatten(0, 1)]))
    running_statistics(encoder, batches)
    features["running"] = features_of(encoder, test_images.to(args.device)).cpu()

    print(f"{args.model}: {args.steps} steps of {len(batches[0])} images, {len(test_labels)} test images")
    for shots in (1, 5):
        scores = paired_scores(features, test_labels, shots, args.episodes)
        difference = scores["running"] - scores["population"]
        print(
            f"5-way {shots}-shot, {args.episodes} episodes: running {interval(scores['running'])}, "
            f"population {interval(scores['population'])}, difference {interval(difference)}"
        )


if __name__ == "__main__":
    main()
