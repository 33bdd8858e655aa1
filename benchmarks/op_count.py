"""A CPU proxy for the GPU's MAML meta-step: the dispatcher-level operations of one vmapped Omniglot
5-way 1-shot meta-step (meta-batch 32, 5 inner steps; or --case) and the bytes their tensors hold (inputs and
outputs of every non-view operation; an upper bound of the memory traffic). The GPU step is bound by
memory traffic, so this tracks it without a GPU: see docs/BENCHMARKS.md.
`--copies` also says where the copies (clone) come from: the innermost fewsight line and the
torch.nn.functional line that called it, or the autograd engine during the backward pass.
`--function NAME` also says how many of the operations and bytes come from the fewsight function NAME
(run while it is on the stack), e.g. `--function double_backward`.
`--case resnet12` counts miniImageNet's ResNet-12 MAML step instead (2 tasks, width 0.125: small for
the CPU), and `--channels-last` folds the tasks as a GPU does (channels-last), so that the copies a
GPU would make show on the CPU.
Usage: python benchmarks/op_count.py [--top N] [--copies] [--case omniglot|miniimagenet|resnet12]
[--channels-last] [--function NAME]
"""

from __future__ import annotations

import argparse
import collections
import functools
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fewsight.nets import conv, conv4
from fewsight.training import bench

CASES = {
    "omniglot": bench.Case("omniglot", "maml", 5, 1, 32),
    "miniimagenet": bench.Case("miniimagenet", "maml", 5, 1, 4),
    "resnet12": bench.Case("miniimagenet", "maml", 5, 1, 2, backbone="resnet12", options=(("width", 0.125),)),
}

VIEWS = {
    "view", "_unsafe_view", "expand", "transpose", "permute", "unsqueeze", "squeeze", "select", "slice",
    "t", "alias", "as_strided", "detach", "reshape", "movedim", "unfold", "split", "split_with_sizes",
    "narrow", "diagonal", "_reshape_alias", "lift_fresh",
}  # fmt: skip


class Tally(TorchDispatchMode):
    """Counts every non-view operation and the bytes of the tensors it reads and writes."""

    def __init__(self, function: str | None = None) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()
        self.copies: collections.Counter[str] = collections.Counter()
        self.function, self.in_function = function, collections.Counter()  # its operations and bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name not in VIEWS:
            self.calls[name] += 1
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
            if name == "clone":
                self.copies[_caller()] += sum(t.numel() * t.element_size() for t in tensors)
            if self.function is not None and self.function in _fewsight_functions():
                self.in_function["operations"] += 1
                self.in_function["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
        return out


def _fewsight_functions() -> set[str]:
    """The names of the fewsight functions on the stack (with the helpers nested in them)."""
    return {frame.name for frame in traceback.extract_stack() if "fewsight/" in frame.filename}


def _caller() -> str:
    """The innermost fewsight and torch.nn.functional lines on the stack (none: autograd's engine)."""
    lines = [
        f"{frame.filename.split('/')[-1]}:{frame.lineno}"
        for frame in traceback.extract_stack()
        if "fewsight/" in frame.filename or frame.filename.endswith("nn/functional.py")
    ]
    return " < ".join(reversed(lines[-2:])) or "the autograd engine (backward pass)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="operations listed by bytes")
    parser.add_argument("--copies", action="store_true", help="where the copies come from")
    parser.add_argument("--case", choices=list(CASES), default="omniglot")
    parser.add_argument("--channels-last", action="store_true", help="fold the tasks as a GPU does")
    parser.add_argument("--function", help="also count what this fewsight function runs")
    args = parser.parse_args()
    case = CASES[args.case]
    if args.channels_last:
        conv.conv_per_task = conv4.conv_per_task = functools.partial(conv.conv_per_task, channels_last=True)
    torch.manual_seed(0)
    learner = bench.build_learner(case.config())
    learner.per_task = False
    batch = bench.meta_batch(case, case.meta_batch, torch.device("cpu"), torch.float32)
    learner.meta_loss(batch).loss.backward()  # warm-up: lazy initialisation stays out of the tally
    tally = Tally(args.function)
    with tally:
        learner.zero_grad()
        learner.meta_loss(batch).loss.backward()
    total = sum(tally.bytes.values())
    print(f"{sum(tally.calls.values())} operations, {total / 1e9:.1f} GB of tensors read and written")
    for name, size in tally.bytes.most_common(args.top):
        print(f"  {name}: {tally.calls[name]} calls, {size / 1e9:.1f} GB")
    if args.copies:
        print("copies by caller:")
        for caller, size in tally.copies.most_common(args.top):
            print(f"  {caller}: {size / 1e9:.1f} GB")
    if args.function:
        share = tally.in_function
        print(f"{args.function}: {share['operations']} operations, {share['bytes'] / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
