"""The one training loop of meta-training and pre-training: what differs (the step, its batches, the
schedule, what validation scores) comes in a `Plan`; resuming, checkpoints, Ctrl-C and SIGTERM,
validation and best.pt, the metrics log, TensorBoard and the progress bar are written here once."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from fewsight.errors import FewsightError
from fewsight.run import files
from fewsight.run.files import (
    METRICS,
    best_score_until,
    keep_best,
    keep_metrics_until,
    kept_scores_until,
    rank,
    save_best,
    save_checkpoint,
)
from fewsight.run.folder import random_states, restore_random_states
from fewsight.training.distributed import all_sum
from fewsight.training.evaluate import Accuracy
from fewsight.training.signals import Interrupted, StopRequests

SPEED_STEPS = 5  # steps timed after the first (a warm-up) for the expected time of the run


class Settings(Protocol):
    def save(self, folder: Path) -> None: ...


@dataclass
class Plan:
    """What a training run does at each step, and how it logs and validates; `run` does the rest."""

    name: str  # "training", "pre-training": for the progress bar and the divergence error
    total: int  # the run's length in steps
    step: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step n (1..total): (loss, accuracy)
    state: Callable[[], dict]  # the run's own part of a checkpoint: weights, optimiser, generators
    log_every: int
    checkpoint_every: int
    throughput: tuple[str, int]  # the metrics column of items per second, and the items of a step
    fix: str  # the flags to lower when training diverges
    columns: Callable[[int], dict] = lambda step: {}  # more metrics columns of a logged step
    log_at: Callable[[int], bool] = lambda step: False  # steps that log besides every log_every-th
    validate: Callable[[int, bool], Accuracy | None] = lambda step, out_of_time: None  # at a logged step
    learner: nn.Module | None = None  # given: best.pt keeps its weights when validation scores best
    keep_best: int = 1  # more than 1: best-STEP.pt files keep the weights of this many best scores
    best_by: str = "accuracy"  # which validation score ranks weights: "accuracy" (higher) or "loss" (lower)
    check_weights: bool = False  # refuse to checkpoint the learner's weights when one is not finite
    postfix: Callable[[dict], dict] = lambda row: {}  # more progress-bar fields from a metrics row
    bar: str = ""  # the progress bar's description, if not `name`
    budget: float | None = None  # seconds (--time): stop after the step that spends them, validate, save
    speed: Callable[[float, int], str] = lambda seconds, step: ""  # a line from a step's time after `step`


def run(
    plan: Plan,
    settings: Settings,
    out: Path,
    state: dict | None,
    device: torch.device,
    *,
    progress: bool = True,
    main: bool = True,
    processes: int = 1,
    board_class: type | None = None,
) -> Path:
    """Train by `plan` into the run folder `out`, from the checkpoint `state` (None: a new run, whose
    learner, optimiser and generators the caller has built; otherwise the caller has restored their
    part of `state`). Only the `main` process writes; losses are averaged over the `processes`.
    Ctrl-C or SIGTERM finishes the step and saves a checkpoint first; a non-finite loss or weight
    stops training with a FewsightError and no checkpoint holding one is ever written."""
    # Sums over the steps since the last metrics row, kept on the device (no host sync per step).
    loss_sum = torch.zeros((), device=device)
    accuracy_sum = torch.zeros((), device=device)
    interval_steps, start = 0, 0
    if state is not None:
        restore_random_states(state, device)
        loss_sum.copy_(state["interval"]["loss"])
        accuracy_sum.copy_(state["interval"]["accuracy"])
        interval_steps, start = state["interval"]["steps"], state["step"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        settings.save(out)
        keep_metrics_until(out / METRICS, start)
    last_good = start if state is not None else None
    best_score = best_score_until(out, start, plan.best_by)
    kept_scores = kept_scores_until(out, start, plan.best_by) if plan.keep_best > 1 and main else {}

    def diverged(step: int) -> FewsightError:
        kept = f"checkpoint.pt (step {last_good}) is kept" if last_good is not None else "nothing was saved"
        return FewsightError(
            f"{plan.name} diverged by step {step} (a non-finite loss or weight); {kept}; {plan.fix}"
        )

    def checkpoint(step: int) -> None:
        nonlocal last_good
        if plan.check_weights:
            weights = torch.stack([p.isfinite().all() for p in plan.learner.parameters()]).all()
            if not bool(weights & loss_sum.isfinite()):
                raise diverged(step)
        snapshot = {
            **plan.state(),
            **random_states(device),
            "step": step,
            "interval": {"loss": loss_sum, "accuracy": accuracy_sum, "steps": interval_steps},
        }
        if main:
            save_checkpoint(snapshot, out, step)
        last_good = step

    metrics = files.MetricsLog(out / METRICS) if main else open(os.devnull, "w")  # noqa: SIM115
    board = board_class(str(out / "tensorboard")) if board_class is not None and main else None
    bar = tqdm(total=plan.total, initial=start, desc=plan.bar or plan.name, disable=not (progress and main))
    interval_start = began = timed = time.perf_counter()
    try:
        with StopRequests() as stop:
            for step in range(start + 1, plan.total + 1):
                loss, accuracy = plan.step(step)
                interval_steps += 1
                loss_sum += loss
                accuracy_sum += accuracy
                bar.update()
                if step in (start + 1, start + 1 + SPEED_STEPS) and progress and main:
                    timed = _report_speed(plan, step, step - start - 1, timed, device)
                out_of_time = _out_of_time(plan.budget, began, device, processes)
                last = step == plan.total or out_of_time
                if step % plan.log_every == 0 or last or plan.log_at(step):
                    row = {
                        "step": step,
                        "loss": all_sum(loss_sum).item() / interval_steps / processes,
                        "accuracy": all_sum(accuracy_sum).item() / interval_steps / processes,
                        **plan.columns(step),
                    }
                    if not math.isfinite(row["loss"]):
                        raise diverged(step)
                    column, items = plan.throughput
                    row[column] = interval_steps * items / (time.perf_counter() - interval_start)
                    interval_steps = 0
                    loss_sum.zero_()
                    accuracy_sum.zero_()
                    score = plan.validate(step, out_of_time)
                    if score is not None:
                        row["val_accuracy"], row["val_ci95"] = score.mean, score.ci95
                        row["val_loss"] = score.loss
                        validated = {"val_accuracy": score.mean, "val_loss": score.loss}
                        ranked = rank(validated, plan.best_by)
                        if plan.learner is not None and main:
                            weights = plan.learner.state_dict()
                            if ranked > best_score:
                                save_best(weights, step, validated, out)
                            if plan.keep_best > 1:
                                keep_best(
                                    weights, step, validated, out, kept_scores, plan.keep_best, plan.best_by
                                )
                        best_score = max(best_score, ranked)
                    _log(row, metrics, board)
                    bar.set_postfix(
                        loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}", **plan.postfix(row)
                    )
                    interval_start = time.perf_counter()
                if step % plan.checkpoint_every == 0 or last or stop.requested:
                    checkpoint(step)
                if stop.requested:
                    raise Interrupted(step if main else None)
                if out_of_time:
                    break
    finally:
        bar.close()
        metrics.close()
        if board is not None:
            board.close()
    return out


def _out_of_time(budget: float | None, began: float, device: torch.device, processes: int) -> bool:
    """Whether the time budget is spent; under torchrun, by any process's clock, so that all stop."""
    if budget is None:
        return False
    spent = time.perf_counter() - began >= budget
    if processes == 1:
        return spent
    return bool(all_sum(torch.tensor(float(spent), device=device)).item() > 0)


def _report_speed(plan: Plan, step: int, steps: int, since: float, device: torch.device) -> float:
    """The clock after the run's first step (steps=0), then after the SPEED_STEPS after it, whose mean
    time `plan.speed` turns into a line on the run's expected time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    now = time.perf_counter()
    line = plan.speed((now - since) / steps, step) if steps else ""
    if line:
        tqdm.write(line, file=sys.stderr)
    return now


def _log(row: dict, metrics: object, board: object | None) -> None:
    """Write a metrics row to metrics.jsonl, and to TensorBoard as scalars."""
    metrics.write(json.dumps(row) + "\n")
    metrics.flush()
    if board is not None:
        for name, value in row.items():
            if name != "step":
                board.add_scalar(name, value, row["step"])


def tensorboard_writer_class() -> type:
    """torch's TensorBoard SummaryWriter, or a FewsightError if the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise FewsightError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
    return SummaryWriter
