"""What pre-training's batch-norm groups (--bn-batch) cost: a ResNet-12's forward and backward pass on
a batch of random images without groups and with them, in the standard and the channels-last layout
(what `fewsight pretrain` runs on a GPU), with fewsight's autograd Functions and with torch's own
layers (`first_order`, what pre-training runs since 96812bc). Prints the median pass of each and its
ratio to the pass of that layout with no groups and fewsight's Functions.

Usage: python benchmarks/bn_groups.py [--width 0.5] [--images 64] [--size 80] [--group 16]
[--rounds 5] [--device cpu] [--threads 2] [--bf16] (bf16 autocast, as pre-training's --bf16; for an A/B of
two commits, run it in a checkout of each) [--profile] (on a GPU: then the kernels of the channels-last
passes with and without groups)
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.passes` and fewsight importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import passes
from benchmarks.run import kernel_table
from fewsight.nets.batchnorm import normalised_in_groups
from fewsight.nets.first_order import first_order
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    passes.add_arguments(parser, width=0.5, rounds=5)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast, as pre-training's --bf16")
    parser.add_argument("--profile", action="store_true", help="then the channels-last passes' kernels")
    args = parser.parse_args()
    device = passes.start(args)
    config = RunConfig(
        dataset="miniimagenet", algorithm="protonet", backbone="resnet12-512", width=args.width
    )
    encoder = build_learner(config).encoder.to(device)
    images = torch.randn(args.images, 3, args.size, args.size, device=device)

    def one_pass(layout: torch.memory_format, group: int, torchs: bool) -> float:
        net, x = encoder.to(memory_format=layout), images.contiguous(memory_format=layout)
        start = time.perf_counter()
        with (
            normalised_in_groups(net, group) if group else nullcontext(),
            first_order(net) if torchs else nullcontext(),
            torch.autocast(device.type, torch.bfloat16, enabled=args.bf16),
        ):
            features = net(x)
        features.float().square().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    cases = [
        (name, layout, group, torchs)
        for name, layout in (("standard", torch.contiguous_format), ("channels-last", torch.channels_last))
        for group in (0, args.group)
        for torchs in (False, True)
    ]
    medians = passes.median_times({case: partial(one_pass, *case[1:]) for case in cases}, args.rounds)
    for name, layout, group, torchs in cases:
        median, base = medians[name, layout, group, torchs], medians[name, layout, 0, False]
        label = f"groups of {group}" if group else "no groups"
        layers = "torch's layers" if torchs else "fewsight's"
        print(f"{name:13} {label:12} {layers:14} {median * 1000:9.1f} ms  {median / base:.2f}x")
    if args.profile:
        for group in (0, args.group):
            groups = f"groups of {group}" if group else "no groups"
            label = f"the channels-last pass, {groups}, torch's layers"
            print(kernel_table(partial(one_pass, torch.channels_last, group, True), label, per="pass"))


if __name__ == "__main__":
    main()
