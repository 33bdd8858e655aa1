"""The one meta-training loop: Adam on the meta-loss, validation on fixed episodes, checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from fewsight.algorithms import MetaLearner
from fewsight.data import EpisodeSampler
from fewsight.data.augment import augment_tasks
from fewsight.data.episodes import TaskBatch
from fewsight.distributed import all_sum, average_gradients, is_main, setup, share, world
from fewsight.errors import FewsightError
from fewsight.evaluate import evaluate
from fewsight.graphs import GraphedTrainingStep, plain_learning_rates, set_learning_rate
from fewsight.run.build import assign_classes, build_learner, load_split
from fewsight.run.config import MODEL_BASED, RunConfig, mamlpp_preset
from fewsight.run.files import (
    BEST,
    keep_metrics_until,
    read_checkpoint,
    save_checkpoint,
    serialise,
    write_atomic,
)
from fewsight.run.folder import (
    check_new_folder,
    merge_resume_settings,
    random_states,
    restore_random_states,
    resumable_checkpoint,
    resumed_length,
)
from fewsight.run.warmstart import load_backbone, run_backbone
from fewsight.schedules import meta_learning_rate
from fewsight.signals import StopRequests
from fewsight.training.device import autocast, default_device

_BOOKKEEPING = ("log_every", "val_every", "val_episodes", "checkpoint_every")  # may change on resume
VALIDATION_SEED = 1  # validation episodes differ from the test episodes (seed 0 by default)
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


def _graphed_step(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    batch: TaskBatch,
    precision: Callable[[], contextlib.AbstractContextManager],
) -> GraphedTrainingStep | None:
    """The meta-training step recorded as a CUDA graph, or None, with a warning, for a step that
    cannot be recorded (an operation that waits for the host, say): training then goes on eagerly."""
    try:
        return GraphedTrainingStep(learner, optimizer, batch, precision)
    except RuntimeError as error:
        if isinstance(error, torch.OutOfMemoryError):
            raise
        warnings.warn(
            f"this step cannot be recorded as a CUDA graph ({str(error).splitlines()[0]}); "
            "training without one (--no-cuda-graphs silences this)",
            stacklevel=2,
        )
        plain_learning_rates(optimizer)
        return None


def _validation_sampler(
    config: RunConfig, data_root: str | os.PathLike | None, device: torch.device, progress: bool
) -> EpisodeSampler:
    """Validation episodes in the training shape; the model-based family, which takes any number of
    classes, validates at fewer ways when the split has fewer classes (ProtoNet trains 20-way on
    miniImageNet, whose validation split has 16)."""
    data = load_split(config, "val", data_root, progress)
    ways = config.ways if config.algorithm not in MODEL_BASED else min(config.ways, data.num_classes)
    return EpisodeSampler(data, ways, config.shots, config.queries, device)


def train(
    config: RunConfig,
    out: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
) -> Path:
    """Meta-train into the run folder `out` (or continue it with resume=True); returns the folder.

    With resume, the folder's saved settings are used, except `steps`: the run's own or config.steps,
    the longer; the resumed run ends with the same weights as an uninterrupted one (bit for bit on the
    CPU).
    Ctrl-C or SIGTERM finishes the current step and saves a checkpoint first. With tensorboard=True,
    every metrics row is also written as TensorBoard scalars under RUN/tensorboard. A non-finite loss or
    weight stops training with a FewsightError; no checkpoint holding one is ever written.
    """
    out = Path(out)
    device = setup(torch.device(device) if device is not None else default_device())
    processes = world()[1]
    main = is_main()  # under torchrun, only rank 0 writes logs, progress and checkpoints
    if resume:
        steps, cuda_graphs = config.steps, config.cuda_graphs
        given, config = config, RunConfig.load(out)
        merge_resume_settings(given, config, _BOOKKEEPING, handled=("steps", "cuda_graphs"))
        config.validate()
        config.steps = resumed_length(config.steps, steps, "steps", config.cosine_lr)
        config.cuda_graphs = cuda_graphs  # how to run, not what to learn: the graph does the same math
        why_not = "an older fewsight wrote it; fewsight eval reads it, but it cannot be resumed"
        state = resumable_checkpoint(out, _RESUMABLE, device, why_not)
    else:
        check_new_folder(out)
        state = None
        mamlpp_preset(config)  # config.json records the schedules, so a resumed run keeps them
    config.validate()
    autocast(device, config.bf16)  # refuses --bf16 on a GPU without bf16 before any data is loaded
    graphs = config.cuda_graphs and device.type == "cuda" and processes == 1
    initial = run_backbone(Path(config.init), config) if config.init and state is None else None
    writer_class = _tensorboard_writer_class() if tensorboard else None
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
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr, capturable=graphs)
    graphed: GraphedTrainingStep | None = None
    generator = sampler.generator(config.seed)
    # Sums over the steps since the last metrics row, kept on the device (no host sync per step).
    loss_sum = torch.zeros((), device=device)
    accuracy_sum = torch.zeros((), device=device)
    interval_steps, start = 0, 0
    if state is not None:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        plain_learning_rates(optimizer)
        for group in optimizer.param_groups:  # the saved run may have trained with or without graphs
            group["capturable"] = graphs
        generator.set_state(state["generator"].cpu())
        restore_random_states(state, device)
        loss_sum.copy_(state["interval"]["loss"])
        accuracy_sum.copy_(state["interval"]["accuracy"])
        interval_steps, start = state["interval"]["steps"], state["step"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out)
        keep_metrics_until(out / "metrics.jsonl", start)
    last_good = start if state is not None else None
    best_score = _best_score_until(out / BEST, start)

    def diverged(step: int) -> FewsightError:
        kept = f"checkpoint.pt (step {last_good}) is kept" if last_good is not None else "nothing was saved"
        return FewsightError(
            f"training diverged by step {step} (a non-finite loss or weight); {kept}; "
            "lower --meta-lr or --inner-lr"
        )

    def checkpoint(step: int) -> None:
        nonlocal last_good
        weights = torch.stack([p.isfinite().all() for p in learner.parameters()]).all()
        if not bool(weights & loss_sum.isfinite()):
            raise diverged(step)
        snapshot = {
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            **random_states(device),
            "step": step,
            "interval": {"loss": loss_sum, "accuracy": accuracy_sum, "steps": interval_steps},
        }
        if main:
            save_checkpoint(snapshot, out, step)
        last_good = step

    metrics = open(out / "metrics.jsonl", "a") if main else open(os.devnull, "w")  # noqa: SIM115
    board = writer_class(str(out / "tensorboard")) if writer_class is not None and main else None
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc="meta-training (CUDA graph)" if graphs else "meta-training",
        disable=not (progress and main),
    )
    interval_start = time.perf_counter()
    try:
        with StopRequests() as stop:
            for step in range(start + 1, config.steps + 1):
                batch = sampler.sample(config.meta_batch, generator, part)
                if config.augment:
                    batch = augment_tasks(batch, generator)
                learner.schedule(step)
                rate = meta_learning_rate(
                    config.meta_lr, step, config.steps, config.cosine_lr, config.lr_halve_every
                )
                if rate is not None:
                    set_learning_rate(optimizer, rate)
                if graphs and graphed is None:
                    graphed = _graphed_step(learner, optimizer, batch, lambda: autocast(device, config.bf16))
                    graphs = graphed is not None
                if graphed is not None:
                    loss, accuracy = graphed(batch)
                else:
                    loss, accuracy = _eager_step(learner, optimizer, batch, autocast(device, config.bf16))
                interval_steps += 1
                loss_sum += loss
                accuracy_sum += accuracy
                bar.update()
                if step % config.log_every == 0 or step == config.steps:
                    row = {
                        "step": step,
                        "loss": all_sum(loss_sum).item() / interval_steps / processes,
                        "accuracy": all_sum(accuracy_sum).item() / interval_steps / processes,
                    }
                    if not math.isfinite(row["loss"]):
                        raise diverged(step)
                    elapsed = time.perf_counter() - interval_start
                    row["tasks_per_s"] = interval_steps * config.meta_batch / elapsed
                    interval_steps = 0
                    loss_sum.zero_()
                    accuracy_sum.zero_()
                    if validation is not None and step % config.val_every == 0:
                        accuracy = evaluate(
                            learner, validation, config.val_episodes, config.meta_batch, seed=VALIDATION_SEED
                        )
                        row["val_accuracy"], row["val_ci95"] = accuracy.mean, accuracy.ci95
                        if accuracy.mean > best_score and main:
                            best = {
                                "learner": learner.state_dict(),
                                "step": step,
                                "val_accuracy": accuracy.mean,
                            }
                            write_atomic(serialise(best), out / BEST)
                        best_score = max(best_score, accuracy.mean)
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if board is not None:
                        for name, value in row.items():
                            if name != "step":
                                board.add_scalar(name, value, step)
                    bar.set_postfix(
                        loss=f"{row['loss']:.3f}",
                        acc=f"{row['accuracy']:.3f}",
                        tasks_s=f"{row['tasks_per_s']:.0f}",
                    )
                    interval_start = time.perf_counter()
                if step % config.checkpoint_every == 0 or step == config.steps or stop.requested:
                    checkpoint(step)
                if stop.requested:
                    raise KeyboardInterrupt
    finally:
        bar.close()
        metrics.close()
        if board is not None:
            board.close()
    return out


def _best_score_until(path: Path, step: int) -> float:
    """The validation score of `best.pt` if it was saved by step `step` (where a resumed run starts;
    a later one is overwritten as the run gets there again), else -inf."""
    if not path.is_file():
        return -math.inf
    best = read_checkpoint(path)
    return float(best["val_accuracy"]) if best["step"] <= step else -math.inf


def _tensorboard_writer_class() -> type:
    """torch's TensorBoard SummaryWriter, or a FewsightError if the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise FewsightError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter
