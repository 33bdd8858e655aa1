"""Meta-training: Adam (or SGD) on the meta-loss of sampled meta-batches, validated on fixed episodes; the
loop itself (checkpoints, resume, signals, metrics) is fewsight/training/loop.py."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from fewsight.algorithms import MetaLearner
from fewsight.data import EpisodeSampler
from fewsight.data.augment import augment_tasks
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.run.algorithms import apply_preset
from fewsight.run.build import assign_classes, build_learner, load_split
from fewsight.run.config import MODEL_BASED, RunConfig
from fewsight.run.folder import start_or_resume
from fewsight.run.lock import holds_run_folder
from fewsight.run.warmstart import load_backbone, run_backbone
from fewsight.training import loop
from fewsight.training.device import autocast, default_device, describe
from fewsight.training.distributed import average_gradients, is_main, setup, share, world
from fewsight.training.evaluate import Accuracy, evaluate
from fewsight.training.graphs import GraphedTrainingStep, plain_learning_rates, recorded, set_learning_rate
from fewsight.training.schedules import meta_learning_rate
from fewsight.training.timing import format_duration

CPU_RECIPE = (  # the README's CPU command: 15 minutes on two CPU cores, training and eval
    "OMP_NUM_THREADS=1 fewsight train --dataset omniglot --algorithm protonet --ways 5 --shots 1 --queries 5 "
    "--meta-batch 8 --trainval --time 11m --out runs/proto-5w1s"
)

_BOOKKEEPING = ("log_every", "val_every", "val_episodes", "checkpoint_every")  # may change on resume
VALIDATION_SEED = 1  # validation episodes differ from the test episodes (seed 0 by default)
MOMENTUM = 0.9  # of SGD in pre-training (a meta-training stage takes --meta-momentum, 0.9 by default)
_RESUMABLE = ("learner", "optimizer", "generator", "torch_rng", "step", "interval")


def _eager_step(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    precision: contextlib.AbstractContextManager,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One meta-training step, gradients averaged over the processes: (loss, accuracy) on the device."""
    with precision:
        result = learner.meta_loss(batch)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    average_gradients(learner.parameters())
    optimizer.step()
    return result.loss.detach(), result.accuracy.detach()


def meta_optimizer(learner: MetaLearner, config: RunConfig, graphs: bool) -> torch.optim.Optimizer:
    """The meta-update's optimiser: Adam, or SGD with momentum, as Meta-Baseline's meta-training
    stage uses; either recordable in a CUDA graph when `graphs` (SGD then runs its fused kernel, which
    reads a learning rate held on the device; its default kernel copies it to the host, which a
    recording forbids). With --meta-grad-clip it clips the gradients first, inside its step: after
    the processes' average and inside a recorded graph. Frozen parameters (--norm-scale-init fixed)
    are left out."""
    trained = [p for p in learner.parameters() if p.requires_grad]
    if config.meta_optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            trained,
            lr=config.meta_lr,
            momentum=config.meta_momentum,
            weight_decay=config.weight_decay,
            fused=graphs or None,
        )
    else:
        optimizer = torch.optim.Adam(
            trained, lr=config.meta_lr, weight_decay=config.weight_decay, capturable=graphs
        )
    if config.meta_grad_clip:
        limit = config.meta_grad_clip

        def clip(optimizer: torch.optim.Optimizer, *_: object) -> None:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        parameter.grad.clamp_(-limit, limit)

        optimizer.register_step_pre_hook(clip)
    return optimizer


def _graphed_step(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    precision: Callable[[], contextlib.AbstractContextManager],
) -> GraphedTrainingStep | None:
    """The meta-training step recorded as a CUDA graph, or None (`graphs.recorded`): training then
    goes on eagerly."""
    graphed = recorded(lambda: GraphedTrainingStep(learner, optimizer, batch, precision), optimizer)
    if graphed is None:
        learner.replayed = False
    return graphed


def _validation_sampler(
    config: RunConfig, data_root: str | os.PathLike | None, device: torch.device, progress: bool
) -> EpisodeSampler:
    """Validation episodes in the training shape; the model-based family, which takes any number of
    classes, validates at fewer ways when the split has fewer classes (ProtoNet trains 20-way on
    miniImageNet, whose validation split has 16)."""
    data = load_split(config, "val", data_root, progress)
    ways = config.ways if config.algorithm not in MODEL_BASED else min(config.ways, data.num_classes)
    if data.num_classes < max(ways, 2):
        raise FewsightError(
            f"the validation split has {data.num_classes} class{'es' * (data.num_classes != 1)}, too few "
            f"for {max(ways, 2)}-way episodes: "
            "add classes to the data set or train with --trainval (no validation split)"
        )
    return EpisodeSampler(data, ways, config.shots, config.queries, device)


def expected_time(seconds: float, step: int, steps: int, device: torch.device, budget: float | None) -> str:
    """The line on a run's expected time from its speed so far, and on a CPU with a long way to go,
    the hint of the CPU recipe and --time."""
    left = (steps - step) * seconds
    line = f"{seconds:.2f} s a step: the {steps - step:,} steps left take about {format_duration(left)}"
    if budget is not None and budget < left:
        line += f"; --time {format_duration(budget)} stops it after about {budget / seconds:,.0f} of them"
    elif device.type == "cpu" and left > 3600:
        line += (
            f"; on a CPU, --time 30m stops it in time with a usable model, and the README's CPU command "
            f"trains ProtoNet in 11 minutes: {CPU_RECIPE}"
        )
    return line


@holds_run_folder
def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    time_budget: float | None = None,
) -> Path:
    """Meta-train into the run folder `out` (or continue it with resume=True); returns the folder.

    With resume, the folder's saved settings are used, except `steps`: the run's own or config.steps,
    the longer; the resumed run ends with the same weights as an uninterrupted one (bit for bit on the
    CPU).
    Ctrl-C or SIGTERM finishes the current step and saves a checkpoint first. With tensorboard=True,
    every metrics row is also written as TensorBoard scalars under RUN/tensorboard. A non-finite loss or
    weight stops training with a FewsightError; no checkpoint holding one is ever written.
    With time_budget (seconds), training stops after the step that spends it, validates (unless
    trainval) and saves a checkpoint; the schedules still run over config.steps, so `--resume`
    continues them where the run stopped.
    """
    out = Path(out)
    device = setup(torch.device(device) if device is not None else default_device())
    processes = world()[1]
    main = is_main()  # under torchrun, only rank 0 writes logs, progress and checkpoints
    why_not = "an older fewsight wrote it; fewsight eval reads it, but it cannot be resumed"
    config, state = start_or_resume(
        config,
        out,
        resume,
        length="steps",
        adjustable=_BOOKKEEPING,
        cosine=lambda saved: saved.cosine_lr or saved.linear_lr,  # schedules over the run's length
        keys=_RESUMABLE,
        why_not=why_not,
        device=device,
        taken=("cuda_graphs",),  # how to run, not what to learn: the graph does the same math
    )
    if not resume:
        apply_preset(config)  # config.json records the schedules, so a resumed run keeps them
    config.validate()
    autocast(device, config.bf16)  # refuses --bf16 on a GPU without bf16 before any data is loaded
    if main and progress:
        print(describe(device, "training"), file=sys.stderr, flush=True)
    graphs = config.cuda_graphs and device.type == "cuda"  # under torchrun too: one recording a process
    initial = run_backbone(Path(config.init), config) if config.init and state is None else None
    board_class = loop.tensorboard_writer_class() if tensorboard else None
    part = share(config.meta_batch)
    assign_classes(config)
    train_split = "trainval" if config.trainval else "train"
    bars = progress and main
    training_images = load_split(config, train_split, data_root, bars)
    sampler = EpisodeSampler(training_images, config.ways, config.shots, config.queries, device)
    validation = None if config.trainval else _validation_sampler(config, data_root, device, bars)

    if config.base_mix > 0:
        config.base_classes = sampler.num_classes  # one stored weight vector per training class
    torch.manual_seed(config.seed)
    learner = build_learner(config).to(device)
    if initial is not None:
        load_backbone(learner, initial, config.init)
    optimizer = meta_optimizer(learner, config, graphs)
    generator = sampler.generator(config.seed)
    if state is not None:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        plain_learning_rates(optimizer)
        for group in optimizer.param_groups:  # the saved run may have trained with or without graphs
            group["capturable"] = graphs
        generator.set_state(state["generator"].cpu())
    graphed: GraphedTrainingStep | None = None

    def step(number: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal graphed, graphs
        batch = sampler.sample(config.meta_batch, generator, part)
        if config.augment:
            batch = augment_tasks(batch, generator)
        learner.schedule(number)
        rate = meta_learning_rate(
            config.meta_lr,
            number,
            config.steps,
            config.cosine_lr,
            config.lr_halve_every,
            config.cosine_floor,
            config.linear_lr,
        )
        if rate is not None:
            set_learning_rate(optimizer, rate)
        if graphs and graphed is None:
            graphed = _graphed_step(learner, optimizer, batch, lambda: autocast(device, config.bf16))
            graphs = graphed is not None
        if graphed is not None:
            return graphed(batch)
        return _eager_step(learner, optimizer, batch, autocast(device, config.bf16))

    def validate(number: int, out_of_time: bool) -> Accuracy | None:
        if validation is None or (number % config.val_every and not out_of_time):
            return None
        return evaluate(learner, validation, config.val_episodes, config.meta_batch, seed=VALIDATION_SEED)

    plan = loop.Plan(
        name="training",
        bar="meta-training (CUDA graph)" if graphs else "meta-training",
        total=config.steps,
        step=step,
        state=lambda: {
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        },
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        throughput=("tasks_per_s", config.meta_batch),
        fix="lower --meta-lr or --inner-lr",
        validate=validate,
        learner=learner,
        keep_best=config.keep_best,
        best_by=config.best_by,
        check_weights=True,
        postfix=lambda row: {"tasks_s": f"{row['tasks_per_s']:.0f}"},
        budget=time_budget,
        speed=lambda seconds, number: expected_time(seconds, number, config.steps, device, time_budget),
    )
    return loop.run(
        plan,
        config,
        out,
        state,
        device,
        progress=progress,
        main=main,
        processes=processes,
        board_class=board_class,
    )
