"""The `fewsight` command: a thin layer over the Python API (train, eval)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fewsight.errors import FewsightError
from fewsight.run.config import ALGORITHMS, BACKBONES, METRICS, RunConfig

if TYPE_CHECKING:
    from fewsight.algorithms import MetaLearner

_DEFAULTS = RunConfig()
_RESOLVED_LATER = ("image_size", "inner_steps", "eval_inner_steps")  # their defaults depend on other flags
_KEPT_ON_RESUME = ("steps", "epochs")  # a run's length: left out of a --resume command, the run's own
MAMLPP_INNER_STEPS = 5  # as in the MAML++ paper, at training and test time
POPULATION_IMAGES = 10_000  # training images behind eval --norm population
_HELP = {
    "dataset": "omniglot, miniimagenet, or the path of your own folder of class subfolders or CSV "
    "of file,label rows (its classes are split 60/20/20 into train/val/test, saved in config.json)",
    "protocol": "class split of the data set: maml (1,200 training characters with rotations) or lake",
    "image_size": "images are resized to this square size (default: 28 for omniglot, 84 for miniimagenet)",
    "algorithm": "meta-learning algorithm",
    "ways": "classes per task (N)",
    "shots": "labelled support images per class (K)",
    "queries": "query images per class (Q)",
    "meta_batch": "tasks per meta-update (T)",
    "steps": "meta-updates in all (with --resume: raise it to train longer)",
    "inner_lr": "step size of the inner gradient steps (leo: initial latent step size)",
    "inner_steps": "inner gradient steps while meta-training (leo: latent steps, always) "
    f"(default: {_DEFAULTS.inner_steps}; mamlpp: {MAMLPP_INNER_STEPS})",
    "eval_inner_steps": "inner gradient steps at validation and test time "
    f"(default: {_DEFAULTS.eval_inner_steps}; mamlpp: {MAMLPP_INNER_STEPS})",
    "meta_lr": "Adam's learning rate for the meta-update",
    "base_mix": "weightpred: probability of using a class's stored base weights while meta-training",
    "metric": "protonet: compare queries with the class prototypes by squared euclidean distance, or by "
    "cosine similarity times a learned temperature starting at 10 (Meta-Baseline)",
    "seed": "seed of the initialisation and of the training episodes",
    "val_every": "validate every this many steps",
    "val_episodes": "validation episodes (fixed)",
    "log_every": "write a metrics line every this many steps",
    "checkpoint_every": "save a checkpoint every this many steps",
    "multi_step_loss": "MAML++ multi-step loss: the query loss after every inner step, its weights moved "
    "towards the last step over this many meta-steps (0: off; mamlpp: 10%% of --steps)",
    "first_order_steps": "MAML++ derivative-order annealing: first-order meta-gradient for this many "
    "meta-steps, then second order (mamlpp: 0 means a third of --steps; 1 is second order at once)",
    "task_chunk": "memory: meta-gradient of this many tasks at a time, each chunk's graph freed before "
    "the next (same result; 0: the whole meta-batch at once)",
    "backbone": "conv4 (the papers' four blocks) or resnet12 (64-160-320-640, as MetaOptNet and RFS)",
    "width": "multiply the backbone's channel counts by this (1: the papers' widths)",
    "drop_rate": "resnet12: DropBlock rate in its last two blocks while training (MetaOptNet, RFS: 0.1)",
    "init": "start the backbone from this run's (e.g. a fewsight pretrain run's); the head is not copied",
}
_AUGMENT_HELP = "augment training images on the device: random resized crop, flip, colour jitter"
_CHOICES = {"algorithm": ALGORITHMS, "protocol": ("maml", "lake"), "backbone": BACKBONES, "metric": METRICS}


def _config_flags(
    parser: argparse.ArgumentParser,
    defaults: object,
    helps: dict[str, str],
    unset: tuple[str, ...] = ("image_size",),
) -> None:
    """One flag per setting of a config dataclass that has a help text (--snake-case); the `unset`
    ones default to None (their default depends on other flags), and so do the _KEPT_ON_RESUME ones
    (a new run gets the dataclass's default, a resumed one keeps its own)."""
    for field in fields(defaults):
        if field.name not in helps:
            continue
        default = getattr(defaults, field.name)
        hidden = field.name in unset or default == ""
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=None if field.name in unset or field.name in _KEPT_ON_RESUME else default,
            choices=_CHOICES.get(field.name),
            help=helps[field.name] + ("" if hidden else f" (default: {default})"),
        )


def _train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="meta-train a model into a run folder",
        description="Meta-train a model; writes config.json, metrics.jsonl and checkpoint.pt into --out.",
    )
    _config_flags(parser, _DEFAULTS, _HELP, _RESOLVED_LATER)
    parser.add_argument(
        "--non-transductive",
        action="store_true",
        help="normalise queries with the support set's batch statistics, not their own",
    )
    parser.add_argument(
        "--trainval",
        action="store_true",
        help="train on train+val classes (the papers' protocol) and skip validation",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs that support it)")
    parser.add_argument("--augment", action="store_true", help=_AUGMENT_HELP)
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record the meta-training step once as a CUDA graph and replay it, 2-3x faster; applies on "
        "a GPU in one process (default: on; --no-cuda-graphs runs the step eagerly)",
    )
    parser.add_argument(
        "--learned-inner-lr",
        action="store_true",
        help="MAML++: learn one inner step size per parameter tensor and per inner step",
    )
    parser.add_argument(
        "--per-step-bn",
        action="store_true",
        help="MAML++: a batch-norm scale and shift for every inner step, meta-learned, not adapted",
    )
    parser.add_argument(
        "--cosine-lr",
        action="store_true",
        help="anneal the meta learning rate along a cosine from --meta-lr to 1%% of it over --steps",
    )
    parser.add_argument(
        "--lr-halve-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="halve the meta learning rate every this many steps (ProtoNet as Snell et al.: 2000; 0: off)",
    )
    parser.add_argument(
        "--checkpoint-inner",
        action="store_true",
        help="memory: recompute each inner step in the backward pass instead of keeping its activations "
        "(same result, more time)",
    )
    parser.add_argument(
        "--task-loop",
        action="store_true",
        help="memory: adapt the tasks one after another with plain autograd instead of all at once "
        "(same result, slower); with --task-chunk 1 only one task's graph is alive, as in learn2learn",
    )
    parser.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard event files to RUN/tensorboard"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (or continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _common(parser)


_PRETRAIN_HELP = {
    "dataset": _HELP["dataset"],
    "protocol": _HELP["protocol"],
    "image_size": _HELP["image_size"],
    "backbone": _HELP["backbone"],
    "width": _HELP["width"],
    "drop_rate": _HELP["drop_rate"] + ", ramped up from 0 over the first half (default: 0.1 for resnet12)",
    "epochs": "passes over the training images (with --resume: raise it to train longer)",
    "batch_size": "images per SGD step",
    "lr": "initial learning rate of SGD (momentum 0.9), decayed to 0 along a cosine",
    "weight_decay": "SGD's weight decay",
    "seed": "seed of the initialisation, the order of the images and the augmentation",
    "val_episodes": "5-way 1-shot validation episodes (nearest centroid) after every epoch",
    "log_every": "write a metrics line every this many steps (and after every epoch)",
    "checkpoint_every": "save a checkpoint every this many steps",
    "metric": "how validation and fewsight eval RUN score the backbone: nearest centroid by euclidean "
    "distance, or by cosine similarity (Meta-Baseline's Classifier-Baseline)",
}


def _pretrain_parser(commands: argparse._SubParsersAction) -> None:
    from fewsight.pretrain import PretrainConfig

    parser = commands.add_parser(
        "pretrain",
        help="pre-train a backbone on all training classes (then fewsight train --init RUN)",
        description="Supervised training of a backbone and a linear head over all training classes; "
        "writes config.json, metrics.jsonl and checkpoint.pt into --out. fewsight eval RUN scores the "
        "backbone as a nearest-centroid classifier; fewsight train --init RUN starts from it.",
    )
    _config_flags(parser, PretrainConfig(), _PRETRAIN_HELP, unset=("image_size", "drop_rate"))
    parser.add_argument("--trainval", action="store_true", help="train on train+val classes; no validation")
    parser.add_argument("--augment", action="store_true", help=_AUGMENT_HELP)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs that support it)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to create (or continue)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _common(parser)


def _eval_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="accuracy of a trained run on fixed test episodes",
        description="Accuracy ± 95% confidence interval on fixed episodes.",
    )
    parser.add_argument("run", help="run folder written by fewsight train, or a bundled model name")
    for name in ("ways", "shots", "queries"):
        parser.add_argument(f"--{name}", type=int, help=f"{name} per test task (default: the run's)")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes (default: %(default)s)")
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="class split to draw episodes from (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the fixed episodes (default: %(default)s)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=10,
        help="episodes evaluated at once (default: %(default)s; lower it if memory runs out, raise it for "
        "speed on a large GPU; the seed's episodes are the same at any batch)",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        help="protonet and pretrain runs: score with this metric instead of the run's (e.g. one pre-trained "
        "backbone both ways)",
    )
    parser.add_argument(
        "--norm",
        choices=("task", "population"),
        help="batch-norm statistics: task (each task's, or its support set's when non-transductive) or "
        f"population: fixed mean and variance of up to {POPULATION_IMAGES:,} training images, each query "
        "normalised on its own (as RFS and Meta-Baseline score pre-trained backbones; model-based and "
        "pretrain runs), the run's population.pt where it has one (default: population where the model "
        "ships population.pt, as the bundled miniimagenet model does, else task)",
    )
    parser.add_argument(
        "--keep-statistics",
        action="store_true",
        help="with --norm population: write the statistics into RUN/population.pt, so that eval, predict, "
        "export and serve use them from then on (delete the file to go back)",
    )
    parser.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="the run's last checkpoint, or the weights that scored best in validation while it trained "
        "(best.pt) (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        help="folder holding omniglot/images_*.zip or miniimagenet/ (images/ and the split csv files) "
        "(default: $FEWSIGHT_DATA, else ~/.cache/fewsight/data)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _predict_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images with a model adapted to a support folder",
        description="Adapt MODEL to the classes in --support (one subfolder of a few images per class) "
        "and print each query's predicted class and probability. MODEL is a run folder, a bundled model "
        "(e.g. omniglot) or a file written by fewsight export (then --support is not needed).",
    )
    parser.add_argument("model", help="run folder, bundled model name, or exported classifier file")
    parser.add_argument("--support", type=Path, help="folder with one subfolder of images per class")
    parser.add_argument("--query", type=Path, nargs="+", required=True, help="query image files or folders")
    parser.add_argument("--csv", type=Path, help="write the predictions to this CSV file instead")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _export_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="save a model adapted to a support folder as one small classifier file",
        description="Adapt MODEL to --support and save the classifier; fewsight predict FILE reads it. "
        "--format onnx writes an ONNX model instead (also from a file written by fewsight export): "
        "float32 images (B, C, H, W) in [0, 1] in the model's form -> logits (B, N).",
    )
    parser.add_argument("model", help="run folder or bundled model name (or an exported file, for onnx)")
    parser.add_argument("--support", type=Path, help="folder with one subfolder per class")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument(
        "--format",
        default="pt",
        choices=("pt", "onnx"),
        help="pt: fewsight's own file; onnx: an ONNX model for ONNX Runtime and other runtimes, "
        "needs pip install 'fewsight[onnx]' (default: %(default)s)",
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _plot_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plot",
        help="PNG files of what a run learned",
        description="Write curves.png (learning curves), episode.png (a test episode with each query's "
        "prediction marked right or wrong) and, for the MAML family, steps.png (accuracy against "
        "the number of adaptation steps) into --out.",
    )
    parser.add_argument("run", help="run folder or bundled model name")
    parser.add_argument("--out", type=Path, help="folder for the PNG files (default: RUN/plots, or ./plots)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"), help="episodes' split")
    parser.add_argument("--max-steps", type=int, default=10, help="steps.png: up to this many inner steps")
    parser.add_argument("--episodes", type=int, default=100, help="steps.png: episodes per point")
    _common(parser)


def _bench_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="time meta-steps of every algorithm and implementation",
        description="Median time per meta-step, tasks per second, peak GPU memory and time to the first "
        "step, on random images of each data set's shape, after checking each implementation's "
        "meta-gradient against the float64 per-task reference; then the episode sampler's speed.",
    )
    parser.add_argument("--dataset", nargs="+", choices=("omniglot", "miniimagenet"), help="default: both")
    parser.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, help="default: all")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed meta-steps per row (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="a local web page that learns new classes from a few images",
        description="Serve a web page (and a JSON API, described at /openapi.json) where you make "
        "classes, drop a few images into each, then drop query images to classify them. Needs "
        "pip install 'fewsight[serve]'.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default="omniglot",
        help="bundled model name, run folder or exported classifier file (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 opens it to "
        "other machines, with no password)",
    )
    parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: any free one)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewsight", description="Few-shot recognition by meta-learning.")
    commands = parser.add_subparsers(dest="command", required=True)
    _train_parser(commands)
    _pretrain_parser(commands)
    _eval_parser(commands)
    _predict_parser(commands)
    _export_parser(commands)
    _plot_parser(commands)
    _bench_parser(commands)
    _serve_parser(commands)
    return parser


def _out_of_memory(device, fix: str) -> FewsightError:
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


def _device(name: str | None):
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


def _settings(args: argparse.Namespace, config_class: type) -> dict:
    """The config's settings from the flags: a data set path made absolute, the image size defaulted."""
    from fewsight.run.config import DATASETS, DEFAULT_IMAGE_SIZE

    values = {f.name: getattr(args, f.name) for f in fields(config_class) if hasattr(args, f.name)}
    for name in _KEPT_ON_RESUME:
        if name in values and values[name] is None:  # 1: a resumed run keeps its own, the longer
            values[name] = 1 if args.resume else getattr(config_class(), name)
    if args.dataset not in DATASETS and Path(args.dataset).exists():
        values["dataset"] = str(Path(args.dataset).resolve())
    if values["image_size"] is None:
        values["image_size"] = DEFAULT_IMAGE_SIZE.get(args.dataset, 84)
    return values


def _run_train(args: argparse.Namespace) -> None:
    import torch

    from fewsight.train import train

    values = _settings(args, RunConfig)
    for name in ("inner_steps", "eval_inner_steps"):
        if values[name] is None:
            values[name] = MAMLPP_INNER_STEPS if args.algorithm == "mamlpp" else getattr(_DEFAULTS, name)
    if args.init:
        values["init"] = str(Path(args.init).resolve())
    config = RunConfig(**{**values, "transductive": not args.non_transductive})
    config.validate()
    device = _device(args.device)
    try:
        out = train(config, args.out, args.data_root, device, args.resume, not args.quiet, args.tensorboard)
    except torch.cuda.OutOfMemoryError as error:
        raise _out_of_memory(device, "lower --meta-batch, --ways, --queries or --inner-steps") from error
    from fewsight.distributed import is_main

    if is_main():
        print(f"trained: {out}")


def _run_pretrain(args: argparse.Namespace) -> None:
    import torch

    from fewsight.pretrain import PretrainConfig, pretrain

    values = _settings(args, PretrainConfig)
    if values["drop_rate"] is None:
        values["drop_rate"] = 0.1 if args.backbone == "resnet12" else 0.0
    config = PretrainConfig(**values)
    config.validate()
    device = _device(args.device)
    try:
        out = pretrain(config, args.out, args.data_root, device, args.resume, not args.quiet)
    except torch.cuda.OutOfMemoryError as error:
        raise _out_of_memory(device, "lower --batch-size") from error
    print(f"pre-trained: {out} (fewsight eval {out}; fewsight train --init {out} ...)")


def _set_population_statistics(
    learner: MetaLearner, config: RunConfig, data_root: str | None, progress: bool
) -> None:
    """Fix the learner's batch-norm statistics to those of up to POPULATION_IMAGES training images
    (a fixed random choice)."""
    import torch

    from fewsight.algorithms.predictor import ParameterPredictor
    from fewsight.nets.population import estimate_population_statistics
    from fewsight.run.build import load_split

    if not isinstance(learner, ParameterPredictor):
        raise FewsightError(
            f"--norm population applies to the model-based family and pretrain runs, not "
            f"{config.algorithm}, whose adapted weights are tied to each task's statistics; drop it"
        )
    images = load_split(config, "train", data_root, progress).images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:POPULATION_IMAGES]
    estimate_population_statistics(learner.encoder, images[chosen])


def _protocol(config: RunConfig, learner: MetaLearner, transductive: bool, pretrained: bool) -> dict:
    """What the papers report beside a score: backbone and its widths, image size, how it was trained
    (the ways and shots of its episodes, or supervised pre-training on all training classes, whose
    ways and shots are null), and whether the queries were normalised together (transductive)."""
    from fewsight.run.warmstart import backbone_of

    return {
        "backbone": config.backbone,
        "widths": backbone_of(learner).block_channels,
        "image_size": config.image_size,
        "training": "pretrain" if pretrained else "episodic",
        "trained_ways": None if pretrained else config.ways,
        "trained_shots": None if pretrained else config.shots,
        "transductive": transductive,
    }


def _run_eval(args: argparse.Namespace) -> None:
    import torch

    from fewsight.algorithms import ProtoNet
    from fewsight.data import EpisodeSampler
    from fewsight.evaluate import evaluate
    from fewsight.models import load_model, max_ways, resolve_run
    from fewsight.nets.population import has_population_statistics, save_population_statistics
    from fewsight.pretrain import is_pretrain_run
    from fewsight.run.build import load_split
    from fewsight.run.config import check_seed
    from fewsight.run.folder import checkpoint_step

    if args.episodes < 1 or args.batch < 1:
        raise FewsightError("--episodes and --batch must be at least 1")
    check_seed(args.seed)
    run = Path(args.run)
    if not run.exists() and args.run not in _bundled():
        raise FewsightError(f"no run folder at {run}; pass the --out of a training run or a bundled model")
    from fewsight.distributed import is_main, setup

    if args.keep_statistics and args.norm != "population":
        raise FewsightError("--keep-statistics keeps population statistics: add --norm population")
    device = setup(_device(args.device))
    folder = resolve_run(args.run)
    config, learner = load_model(folder, device, args.weights, "task" if args.norm == "task" else "model")
    if args.metric is not None:
        if not isinstance(learner, ProtoNet):
            raise FewsightError(
                f"--metric applies to protonet and pretrain runs, not {config.algorithm}; drop it"
            )
        learner = learner.with_metric(args.metric)
    ways = args.ways or config.ways
    if max_ways(config) not in (None, ways):
        raise FewsightError(f"this {config.algorithm} model takes exactly {config.ways} ways; drop --ways")
    if args.norm == "population" and not has_population_statistics(learner):
        _set_population_statistics(learner, config, args.data_root, not args.quiet)
    if args.keep_statistics:
        save_population_statistics(learner, folder)
    norm = "population" if has_population_statistics(learner) else "task"
    shots, queries = args.shots or config.shots, args.queries or config.queries
    data = load_split(config, args.split, args.data_root, not args.quiet)
    sampler = EpisodeSampler(data, ways, shots, queries, device)
    try:
        accuracy = evaluate(learner, sampler, args.episodes, args.batch, args.seed, not args.quiet)
    except torch.cuda.OutOfMemoryError as error:
        raise _out_of_memory(device, f"lower --batch ({args.batch} episodes at once)") from error
    if not is_main():
        return
    if args.json:
        details = {"split": args.split, "seed": args.seed, "ways": ways, "shots": shots, "queries": queries}
        if isinstance(learner, ProtoNet):
            details["metric"] = learner.metric
        details["norm"] = norm
        details["weights"] = args.weights
        details["step"] = checkpoint_step(folder, args.weights)
        transductive = config.transductive and norm == "task"
        protocol = _protocol(config, learner, transductive, is_pretrain_run(folder))
        print(json.dumps({**asdict(accuracy), **details, "algorithm": config.algorithm, **protocol}))
    else:
        scored = f" ({learner.metric})" if isinstance(learner, ProtoNet) else ""
        scored += ", population batch-norm statistics" if norm == "population" else ""
        print(f"{config.algorithm}{scored} {ways}-way {shots}-shot, {args.split}: {accuracy}")


def _bundled() -> list[str]:
    from fewsight.models import bundled_names

    return bundled_names()


def _adapted(args: argparse.Namespace):
    """Config, classifier and class names: from an exported file, or a model adapted to --support."""
    from fewsight.models import load_exported, load_model, max_ways
    from fewsight.predict import read_support

    device = _device(args.device)
    if Path(args.model).is_file():
        if getattr(args, "support", None) is not None:
            raise FewsightError(f"{args.model} is an exported classifier with its classes; drop --support")
        return load_exported(Path(args.model), device)
    if args.support is None:
        raise FewsightError("pass --support DIR: one subfolder of a few images per class")
    config, learner = load_model(args.model, device)
    support_x, support_y, names = read_support(args.support, config, max_ways(config))
    return config, learner.adapt(support_x.to(device), support_y.to(device)), names


def _run_predict(args: argparse.Namespace) -> None:
    from fewsight.predict import predict, query_paths, write_csv

    config, classifier, names = _adapted(args)
    predictions = predict(classifier, query_paths(args.query), config, names)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            write_csv(predictions, names, handle)
        print(f"wrote {len(predictions)} predictions to {args.csv}")
    else:
        for p in predictions:
            print(f"{p.path}\t{p.predicted}\t{p.probability:.3f}")


def _run_export(args: argparse.Namespace) -> None:
    from fewsight.models import export_classifier

    if Path(args.model).is_file() and args.format == "pt":
        raise FewsightError(f"{args.model} is already an exported classifier; --format onnx converts it")
    config, classifier, names = _adapted(args)
    export_classifier(config, classifier, names, args.out, args.format)
    print(f"exported a {len(names)}-class classifier to {args.out} ({args.out.stat().st_size // 1024} KiB)")


def _run_serve(args: argparse.Namespace) -> None:
    try:
        from fewsight.serve import Session, serve
    except ImportError as error:
        raise FewsightError(f"fewsight serve needs {error.name}: pip install 'fewsight[serve]'") from error
    if not 0 <= args.port <= 65535:
        raise FewsightError("--port must be between 0 and 65535")
    serve(Session(args.model, _device(args.device)), args.host, args.port)


def _run_plot(args: argparse.Namespace) -> None:
    from fewsight.algorithms import MAML
    from fewsight.data import EpisodeSampler
    from fewsight.models import BUNDLED, load_model, resolve_run
    from fewsight.plot import plot_adaptation_steps, plot_curves, plot_episode
    from fewsight.run.build import load_split

    if args.max_steps < 1 or args.episodes < 1:
        raise FewsightError("--max-steps and --episodes must be at least 1")
    run = resolve_run(args.run)
    out = args.out or (Path("plots") if run.parent == BUNDLED else run / "plots")
    out.mkdir(parents=True, exist_ok=True)
    config, learner = load_model(run, _device(args.device))
    sampler = EpisodeSampler(
        load_split(config, args.split, args.data_root, not args.quiet),
        config.ways,
        config.shots,
        config.queries,
        _device(args.device),
    )
    written = [plot_curves(run, out / "curves.png"), plot_episode(learner, sampler, out / "episode.png")]
    if isinstance(learner, MAML):
        written.append(
            plot_adaptation_steps(learner, sampler, out / "steps.png", args.max_steps, args.episodes)
        )
    print("wrote " + ", ".join(str(path) for path in written))


def _run_bench(args: argparse.Namespace) -> None:
    from fewsight import bench

    if args.repeats < 3:
        raise FewsightError("--repeats must be at least 3")
    device = _device(args.device)
    cases = bench.select(bench.SUITE, args.dataset, args.algorithm)
    rows = bench.run_suite(
        cases, device, repeats=args.repeats, report=lambda row: print(bench.markdown([row]).splitlines()[-1])
    )
    print("\n" + bench.markdown(rows))
    for tasks in (32, 1024):
        speed = bench.sampler_speed(device, tasks)
        print(f"episode sampler: {speed:,.0f} Omniglot episodes/s in meta-batches of {tasks}")
    if args.json:
        args.json.write_text(json.dumps(bench.as_dicts(rows), indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv`; returns the exit status (2 for a problem it explains on stderr)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run_command(args)


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    """A warning on one line, as an error is (no file name or source line)."""
    print(f"fewsight: warning: {message}", file=sys.stderr)


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit status (2 for a problem it explains on stderr)."""
    try:
        commands = {
            "train": _run_train,
            "pretrain": _run_pretrain,
            "eval": _run_eval,
            "predict": _run_predict,
            "export": _run_export,
            "plot": _run_plot,
            "bench": _run_bench,
            "serve": _run_serve,
        }
        commands[args.command](args)
    except (FewsightError, OSError) as error:  # OSError: a full disk, a folder that cannot be written
        print(f"fewsight: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewsight: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0
