"""What the commands share: flags made from a config's fields, the data, device and progress flags,
the device a command runs on, and the one-line error for a GPU out of memory."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from fewsight.algorithms.reptile import INNER_OPTIMIZERS
from fewsight.errors import FewsightError
from fewsight.nets.inputs import INPUT_NORMS
from fewsight.run.algorithms import REGISTRY
from fewsight.run.config import (
    ALGORITHMS,
    BACKBONES,
    BEST_BY,
    META_OPTIMIZERS,
    METRICS,
    WEIGHT_INITS,
    RunConfig,
)

if TYPE_CHECKING:
    import torch

DEFAULTS = RunConfig()
KEPT_ON_RESUME = ("steps", "epochs")  # a run's length: left out of a --resume command, the run's own
_OWN_STEPS = "; ".join(f"{n}: {a.inner_steps}" for n, a in REGISTRY.items() if a.inner_steps is not None)
HELP = {
    "dataset": "omniglot, miniimagenet, or the path of your own folder of class subfolders or CSV "
    "of file,label rows (its classes are split 60/20/20 into train/val/test, saved in config.json)",
    "protocol": "class split of the data set: maml (1,200 training characters with rotations) or lake",
    "image_size": "images are resized to this square size (default: 28 for omniglot, 84 for miniimagenet)",
    "algorithm": "meta-learning algorithm",
    "ways": "classes per task (N)",
    "shots": "labelled support images per class (K)",
    "queries": "query images per class (Q)",
    "meta_batch": "tasks per meta-update (T)",
    "steps": "meta-updates in all, and the length of the schedules (with --resume: raise it to train "
    "longer; with --time, training may stop sooner)",
    "inner_lr": "step size of the inner gradient steps (leo: initial latent step size)",
    "inner_steps": "inner gradient steps while meta-training (leo: latent steps, always) "
    f"(default: {DEFAULTS.inner_steps}; {_OWN_STEPS})",
    "eval_inner_steps": "inner gradient steps at validation and test time "
    f"(default: {DEFAULTS.eval_inner_steps}; {_OWN_STEPS})",
    "meta_lr": "learning rate of the meta-update",
    "meta_optimizer": "optimiser of the meta-update: adam, or sgd with --meta-momentum (Meta-Baseline's "
    "stage: --meta-optimizer sgd --meta-lr 1e-3 --weight-decay 5e-4)",
    "meta_momentum": "momentum of --meta-optimizer sgd (Reptile's code: 0, a plain step of --meta-lr "
    "times theta - mean phi)",
    "weight_decay": "L2 weight decay of the meta-update",
    "meta_grad_clip": "clip every element of the meta-gradient to [-this, this] before the update (the MAML "
    "paper's code clips at 10 on miniImageNet; 0: off)",
    "base_mix": "weightpred: probability of using a class's stored base weights while meta-training",
    "metric": "protonet: compare queries with the class prototypes by squared euclidean distance, or by "
    "cosine similarity times a learned temperature starting at 10 (Meta-Baseline)",
    "step_statistics_tasks": "protonet with --step-statistics: normalise the step's tasks in groups of this "
    "many, each group's support and query images as one batch (Meta-Baseline's stage: 2 of its 4 on each "
    "of 2 GPUs); 0: all of them together",
    "seed": "seed of the initialisation and of the training episodes",
    "val_every": "validate every this many steps",
    "val_episodes": "validation episodes (fixed)",
    "best_by": "the validation score that picks best.pt and --keep-best's weights: the highest accuracy, "
    "or the lowest query loss (Snell et al.'s code stops early on validation loss)",
    "keep_best": "keep the weights of this many best validation scores as best-STEP.pt besides best.pt, "
    "for fewsight eval --weights ensemble (MAML++'s code scores an ensemble of its 5 best)",
    "log_every": "write a metrics line every this many steps",
    "checkpoint_every": "save a checkpoint every this many steps",
    "multi_step_loss": "MAML++ multi-step loss: the query loss after every inner step, its weights moved "
    "towards the last step over this many meta-steps, then the last step's alone (0: off; mamlpp: 10%% of "
    "--steps)",
    "first_order_steps": "MAML++ derivative-order annealing: first-order meta-gradient for this many "
    "meta-steps, then second order (mamlpp: 0 means a third of --steps; 1 is second order at once)",
    "inner_optimizer": "reptile: plain inner steps of --inner-lr, or adam's (beta1 = 0, its second moment "
    "carried from task to task, as Reptile's code: --inner-lr 0.001)",
    "inner_batch": "reptile: images per inner step while meta-training, the next ones of the task's support "
    "and query images in a random order (Reptile's code: 10); 0: all of them",
    "task_chunk": "memory: meta-gradient of this many tasks at a time, each chunk's graph freed before "
    "the next (same result; 0: the whole meta-batch at once)",
    "backbone": "conv4 (the papers' four blocks), resnet12 (64-160-320-640 channels, as MetaOptNet and RFS) "
    "or resnet12-512 (64-128-256-512, as Meta-Baseline)",
    "width": "multiply the backbone's channel counts by this (1: the papers' widths)",
    "drop_rate": "resnet12, resnet12-512: DropBlock rate in its last two blocks while training (MetaOptNet, "
    "RFS: 0.1)",
    "norm_scale_init": "how the batch-norm scales start: ones, uniform (drawn from U(0, 1), as in the "
    "PyTorch of the papers' time and the ProtoNet reference code; docs/RESULTS.md measures it), or fixed "
    "(at 1 and never trained, as the MAML paper's code, whose batch norm learns a shift only)",
    "weight_init": "how convolution and linear weights start: torch's default, or xavier (Xavier-uniform "
    "weights and zero biases, as the MAML paper's code)",
    "input_norm": "how input images are normalised, as part of the model: none (in [0, 1]) or imagenet "
    "(ImageNet's mean and standard deviation, as the ProtoNet and Meta-Baseline reference code)",
    "init": "start the backbone from this run's (e.g. a fewsight pretrain run's); the head is not copied",
}
AUGMENT_HELP = "augment training images on the device: random resized crop, flip, colour jitter"
_CHOICES = {
    "algorithm": ALGORITHMS,
    "protocol": ("maml", "lake"),
    "backbone": BACKBONES,
    "metric": METRICS,
    "meta_optimizer": META_OPTIMIZERS,
    "inner_optimizer": INNER_OPTIMIZERS,
    "best_by": BEST_BY,
    "weight_init": WEIGHT_INITS,
    "input_norm": tuple(INPUT_NORMS),
}


def config_flags(
    parser: argparse.ArgumentParser,
    defaults: object,
    helps: dict[str, str],
    unset: tuple[str, ...] = ("image_size",),
) -> None:
    """One flag per setting of a config dataclass that has a help text (--snake-case); the `unset`
    ones default to None (their default depends on other flags), and so do the KEPT_ON_RESUME ones
    (a new run gets the dataclass's default, a resumed one keeps its own)."""
    for field in fields(defaults):
        if field.name not in helps:
            continue
        default = getattr(defaults, field.name)
        hidden = field.name in unset or default == ""
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=None if field.name in unset or field.name in KEPT_ON_RESUME else default,
            choices=_CHOICES.get(field.name),
            help=helps[field.name] + ("" if hidden else f" (default: {default})"),
        )


def data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        help="folder holding omniglot/images_*.zip or miniimagenet/ (images/ and the split csv files) "
        "(default: $FEWSIGHT_DATA, else $FEWSIGHT_CACHE/data, else ~/.cache/fewsight/data)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (nor train's lines on the device and expected time)",
    )


def run_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `train` and `pretrain` that their shared flags give."""
    return {"data_root": args.data_root, "resume": args.resume, "progress": not args.quiet}


def device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def out_of_memory(device, fix: str) -> FewsightError:
    """The one-line error for a GPU out of memory: how much of the card this process and the others
    hold (several trainings side by side on one card are the usual cause), and the fix."""
    import torch

    gib = 2**30
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:  # the card cannot even answer: say what we can
        return FewsightError(f"out of memory on {device}; {fix}")
    mine = torch.cuda.memory_reserved(device)
    others = max(total - free - mine, 0)
    return FewsightError(
        f"out of memory on {device} (this run holds {mine / gib:.1f} GiB, other processes "
        f"{others / gib:.1f} GiB, of {total / gib:.1f}); {fix}, or run fewer processes on the card"
    )


def pick_device(name: str | None) -> torch.device:
    """The device a --device flag names, checked to exist (default: cuda if available, else cpu)."""
    import torch

    from fewsight.training.device import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise FewsightError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from error
    if device.type not in ("cpu", "cuda"):
        raise FewsightError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewsightError("no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise FewsightError(f"there is no {name} here: {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed episode shapes: pick the fastest kernels once
    return device


def settings(args: argparse.Namespace, config_class: type) -> dict:
    """The config's settings from the flags: a data set path made absolute, the image size defaulted."""
    from fewsight.run.config import DATASETS, DEFAULT_IMAGE_SIZE

    values = {f.name: getattr(args, f.name) for f in fields(config_class) if hasattr(args, f.name)}
    for name in KEPT_ON_RESUME:
        if name in values and values[name] is None:  # 1: a resumed run keeps its own, the longer
            values[name] = 1 if args.resume else getattr(config_class(), name)
    if args.dataset not in DATASETS and Path(args.dataset).exists():
        values["dataset"] = str(Path(args.dataset).resolve())
    if values["image_size"] is None:
        values["image_size"] = DEFAULT_IMAGE_SIZE.get(args.dataset, 84)
    return values
