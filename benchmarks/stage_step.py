"""Why Meta-Baseline's stage trains at a fraction of pre-training's images per second: the forward and
backward pass of one stage step (recipe metabaseline-ref: a cosine ProtoNet on a ResNet-12, 4 tasks of
5-way 1-shot with 15 queries, batch norm over 2 tasks' images at a time) with its images in the
standard layout (as the stage ran before it took channels-last) and channels-last, beside one
pre-training step (128 images, batch norm over groups of 32) in either layout. Random images; prints
each pass's median time and images per second.

Usage: python benchmarks/stage_step.py [--device cpu] [--width 1] [--size 80] [--rounds 10]
[--threads 2] [--no-bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks.passes` and fewsight importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import passes
from fewsight.data.episodes import TaskBatch
from fewsight.nets.layout import for_convolution
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.training.pretrain import grouped_features

TASKS, WAYS, SHOTS, QUERIES = 4, 5, 1, 15
PRETRAIN_BATCH, PRETRAIN_GROUP, CLASSES = 128, 32, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    passes.add_arguments(parser, width=1.0, rounds=10)
    parser.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    args = parser.parse_args()
    device = passes.start(args)
    config = RunConfig(
        dataset="miniimagenet",
        algorithm="protonet",
        backbone="resnet12-512",
        width=args.width,
        metric="cosine",
        meta_batch=TASKS,
        step_statistics=True,
        step_statistics_tasks=2,
    )
    learner = build_learner(config).to(device).train()
    head = torch.nn.Linear(learner.encoder.feature_size, CLASSES).to(device)

    def images(count: int) -> torch.Tensor:
        return torch.rand(count, 3, args.size, args.size, device=device)

    support, queries = images(TASKS * WAYS * SHOTS), images(TASKS * WAYS * QUERIES)
    batch = TaskBatch(
        support.unflatten(0, (TASKS, -1)),
        torch.arange(WAYS, device=device).repeat_interleave(SHOTS).repeat(TASKS, 1),
        queries.unflatten(0, (TASKS, -1)),
        torch.arange(WAYS, device=device).repeat_interleave(QUERIES).repeat(TASKS, 1),
    )
    pretrain_images, labels = images(PRETRAIN_BATCH), torch.randint(CLASSES, (PRETRAIN_BATCH,), device=device)

    def stage(channels_last: bool) -> torch.Tensor:
        learner.channels_last = channels_last
        return learner.meta_loss(batch).loss

    def pretrain(channels_last: bool) -> torch.Tensor:
        x = for_convolution(pretrain_images, channels_last)
        return F.cross_entropy(head(grouped_features(learner.encoder, x, PRETRAIN_GROUP)).float(), labels)

    cases = {
        f"{name}, {layout}": (partial(step, channels_last), count)
        for name, step, count in (
            ("stage", stage, len(support) + len(queries)),
            ("pre-training", pretrain, PRETRAIN_BATCH),
        )
        for layout, channels_last in (("standard layout", False), ("channels-last", True))
    }

    def one_pass(loss_of) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=not args.no_bf16):
            loss = loss_of()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed = {name: partial(one_pass, loss_of) for name, (loss_of, _) in cases.items()}
    medians = passes.median_times(timed, args.rounds)
    print(f"{device}, width {args.width}, {args.size} px, {'float32' if args.no_bf16 else 'bf16'}:")
    for name, (_, count) in cases.items():
        median = medians[name]
        print(f"  {name:28} {median * 1000:8.1f} ms  {count / median:8.0f} images/s")


if __name__ == "__main__":
    main()
