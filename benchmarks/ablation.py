"""What else might shorten the CUDA-graphed MAML step (what `fewsight train` runs on a GPU): its replay
time against the step before commit 1caaec7 (torch's convolution, whose double backward loops over
the tasks, and batch norm written out under vmap), under variants of the convolution (im2col + matmul
instead of cuDNN's grouped kernels), of
precision (TF32 off, bf16 autocast), of memory layout (channels-last) and of the first Omniglot
convolution (its one input channel left alone, so that the tasks' grouped convolution is a depthwise
one, which torch runs with its own kernels instead of cuDNN's; the default widens it with a zero
channel), of the tasks' folded activations (the standard layout instead of channels-last) and of
ResNet-12's pool (torch's batching rule instead of the folded pool), and of batch norm's double
backward (compiled by torch.compile into fused kernels, where eager torch runs about 30 operations a
layer, most of them on per-channel vectors: the set-up time then includes the compilation), each variant
that changes the arithmetic checked against the float64 per-task reference; then the step's kernel
profile, with the kernels' full names.
An experiment behind docs/BENCHMARKS.md, for a GPU: python benchmarks/ablation.py [--variants NAME ...]
[--cases omniglot miniimagenet resnet12] [--no-profile]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from run import profile  # benchmarks/run.py, beside this file

from fewsight.nets import batchnorm, conv, conv4, resnet12
from fewsight.training import bench

CASES = {
    "omniglot": bench.Case("omniglot", "maml", 5, 1, 32),
    "miniimagenet": bench.Case("miniimagenet", "maml", 5, 1, 4),
    "resnet12": bench.Case("miniimagenet", "maml", 5, 1, 4, backbone="resnet12"),
}
CONV4_ONLY = ("torch conv", "unfold", "first conv")  # variants that change Conv4's blocks alone
RESNET12_ONLY = ("resnet12",)  # variants that change ResNet-12's blocks alone
VARIANTS = [
    "current",
    "torch conv, written-out batch norm",
    "no cudnn.benchmark",
    "no tf32 conv",
    "matmul tf32",
    "unfold first conv",
    "unfold all convs",
    "unfold all convs + matmul tf32",
    "bf16",
    "channels_last",
    "first conv depthwise",
    "tasks folded in the standard layout",
    "resnet12 pool by vmap's rule",
    "compiled batch-norm double backward",
    "compiled batch-norm double backward, static shapes",
]


def unfold_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 'same' convolution as im2col and one matmul: under vmap, a batched matmul over tasks."""
    columns = F.unfold(x, weight.shape[-1], padding=weight.shape[-1] // 2)  # (B, C*k*k, H*W)
    out = weight.flatten(1) @ columns + bias[:, None]
    return out.view(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


def block_with_unfold(first_only: bool):
    """ConvBlock.forward with the convolution (of the first block only, or of all) as `unfold_conv`."""

    def forward(self, x, context_size=None, film=None):
        if self.conv.in_channels <= 3 or not first_only:
            x = unfold_conv(x, self.conv.weight, self.conv.bias)
        else:
            x = self.conv(x)
        return F.relu(F.max_pool2d(self.norm(x, context_size), 2))

    return forward


def vmap_rule_pool(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """ResNet-12's block ending before the folded pool: torch's functions, under vmap torch's batching
    rule for max-pool (tasks and images flattened into one batch: a copy in the standard layout)."""
    return F.max_pool2d(F.leaky_relu(x, negative_slope), 2)


def torch_layers_block(self, x, context_size=None, film=None):
    """ConvBlock.forward as before commit 1caaec7: F.conv2d and the written-out batch norm (the form
    that `context_size` takes; the whole batch as the context gives the same statistics)."""
    x = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
    return F.relu(F.max_pool2d(self.norm(x, x.shape[0] if context_size is None else context_size), 2))


ORIGINAL_CONV_PER_TASK = conv.conv_per_task
ORIGINAL_DOUBLE_BACKWARD = batchnorm.double_backward
COMPILED = "compiled batch-norm double backward"  # how the names of the variants a compiler rewrites start
OLD_PATHS = {  # variants that take conv_per_task's earlier path: its settings
    "first conv depthwise": {"widen": False},
    "tasks folded in the standard layout": {"channels_last": False},
}


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    original, original_pool = conv4.ConvBlock.forward, resnet12.leaky_relu_pool
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.benchmark = name != "no cudnn.benchmark"
        torch.backends.cudnn.allow_tf32 = name != "no tf32 conv"
        if name.endswith("matmul tf32"):
            torch.set_float32_matmul_precision("high")
        if name.startswith("unfold"):
            conv4.ConvBlock.forward = block_with_unfold(first_only=name == "unfold first conv")
        if name.startswith("torch conv"):
            conv4.ConvBlock.forward = torch_layers_block
        if name in OLD_PATHS:  # both callers: the conv's own vmap rule and a block's
            old_path = functools.partial(ORIGINAL_CONV_PER_TASK, **OLD_PATHS[name])
            conv.conv_per_task = conv4.conv_per_task = old_path
        if name == "resnet12 pool by vmap's rule":
            resnet12.leaky_relu_pool = vmap_rule_pool
        if name.startswith(COMPILED):  # one compilation for all shapes, or one for each shape
            dynamic = not name.endswith("static shapes")
            batchnorm.double_backward = torch.compile(ORIGINAL_DOUBLE_BACKWARD, dynamic=dynamic)
        yield
    finally:
        conv4.ConvBlock.forward, resnet12.leaky_relu_pool = original, original_pool
        batchnorm.double_backward = ORIGINAL_DOUBLE_BACKWARD
        conv.conv_per_task = conv4.conv_per_task = ORIGINAL_CONV_PER_TASK
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved
        torch.set_float32_matmul_precision(precision)


def replay_ms(case: bench.Case, device: torch.device, bf16: bool, channels_last: bool) -> float:
    """Median time of 30 replays of the case's recorded meta-gradient step."""
    torch.manual_seed(0)
    learner = bench.build_learner(case.config()).to(device)
    learner.per_task = False
    batch = bench.static_copy(bench.meta_batch(case, case.meta_batch, device, torch.float32))
    if channels_last:
        for name in ("support_x", "query_x"):
            images = getattr(batch, name)
            layout = images.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            setattr(batch, name, layout.view_as(images))

    def step() -> None:
        learner.zero_grad(set_to_none=False)
        with torch.autocast("cuda", torch.bfloat16, cache_enabled=False, enabled=bf16):
            loss = learner.meta_loss(batch).loss
        loss.backward()

    graph, _ = bench.capture(step)
    times = []
    for _ in range(33):
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=VARIANTS,
        metavar="NAME",
        help="only these (quoted), of: " + "; ".join(VARIANTS) + " (default: all)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        default=["omniglot", "miniimagenet"],
        help="MAML steps to time and profile (default: the two Conv4 ones; resnet12: miniImageNet's "
        "ResNet-12, under the variants that do not change Conv4's blocks alone)",
    )
    parser.add_argument("--no-profile", action="store_true", help="leave out the kernel profiles at the end")
    args = parser.parse_args()
    device = torch.device("cuda")
    cases = [CASES[name] for name in args.cases]
    for case in cases:
        for name in args.variants:
            if case.backbone != "conv4" and name.startswith(CONV4_ONLY):
                continue
            if case.backbone != "resnet12" and name.startswith(RESNET12_ONLY):
                continue
            with variant(name):
                start = time.perf_counter()  # the set-up: warm-up steps (a compilation), the recording
                ms = replay_ms(case, device, bf16=name == "bf16", channels_last=name == "channels_last")
                set_up = time.perf_counter() - start - 33 * ms / 1000
            error = None
            own_blocks = name.startswith(CONV4_ONLY + RESNET12_ONLY)
            if own_blocks or name in ("current", *OLD_PATHS) or name.startswith(COMPILED):
                # Other arithmetic: the variant's float64 meta-gradient against the reference's, which
                # runs outside the variant (with the eager layers).
                within = functools.partial(variant, name)
                error = bench.gradient_error(case, bench.graphed_implementation(), device, within)
            row = f"{case.name} | {name} | {ms:.1f} ms | set-up {set_up:.1f} s | gradient error {error}"
            print(row, flush=True)
    for case in [] if args.no_profile else cases:
        print(profile(device, case, top=20, width=160))


if __name__ == "__main__":
    main()
