"""The one meta-training loop: Adam on the meta-loss, validation on fixed episodes, checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fewsight.data import EpisodeSampler
from fewsight.errors import FewsightError
from fewsight.evaluate import evaluate
from fewsight.runs import RunConfig, assign_classes, build_learner, load_checkpoint, load_split, save_atomic

VALIDATION_SEED = 1  # validation episodes differ from the test episodes (seed 0 by default)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FewsightError("this GPU has no bf16 support; drop --bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(
    config: RunConfig,
    out: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Meta-train into the run folder `out` (or continue it with resume=True); returns the folder.

    With resume, the folder's saved settings are used, except `steps`, which may be raised.
    Interrupting (Ctrl-C) saves a checkpoint first.
    """
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    if resume:
        steps = config.steps
        config = RunConfig.load(out)
        config.steps = max(config.steps, steps)
        state = load_checkpoint(out, device)
    elif (out / "config.json").exists():
        raise FewsightError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    else:
        state = None
    config.validate()
    assign_classes(config)
    train_split = "trainval" if config.trainval else "train"
    sampler = EpisodeSampler(
        load_split(config, train_split, data_root), config.ways, config.shots, config.queries, device
    )
    validation = (
        None
        if config.trainval
        else EpisodeSampler(
            load_split(config, "val", data_root), config.ways, config.shots, config.queries, device
        )
    )

    if config.base_mix > 0:
        config.base_classes = sampler.num_classes  # one stored weight vector per training class
    torch.manual_seed(config.seed)
    learner = build_learner(config).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr)
    generator = sampler.generator(config.seed)
    start = 0
    if state is not None:
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        start = state["step"]
    out.mkdir(parents=True, exist_ok=True)
    config.save(out)

    def checkpoint(step: int) -> None:
        save_atomic(
            {
                "learner": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step,
            },
            out / "checkpoint.pt",
        )

    metrics = open(out / "metrics.jsonl", "a")  # noqa: SIM115 (closed in finally)
    bar = tqdm(total=config.steps, initial=start, desc="meta-training", disable=not progress)
    loss_sum = torch.zeros((), device=device)
    accuracy_sum = torch.zeros((), device=device)
    interval_start, interval_steps, completed = time.perf_counter(), 0, start
    try:
        for step in range(start + 1, config.steps + 1):
            batch = sampler.sample(config.meta_batch, generator)
            with _autocast(device, config.bf16):
                result = learner.meta_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            completed, interval_steps = step, interval_steps + 1
            loss_sum += result.loss.detach()
            accuracy_sum += result.accuracy.detach()
            bar.update()
            if step % config.log_every == 0 or step == config.steps:
                row = {
                    "step": step,
                    "loss": loss_sum.item() / interval_steps,
                    "accuracy": accuracy_sum.item() / interval_steps,
                }
                if not math.isfinite(row["loss"]):
                    raise FewsightError(f"the loss diverged near step {step}; lower --meta-lr or --inner-lr")
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
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}",
                    acc=f"{row['accuracy']:.3f}",
                    tasks_s=f"{row['tasks_per_s']:.0f}",
                )
                interval_start = time.perf_counter()
            if step % config.checkpoint_every == 0:
                checkpoint(step)
    except KeyboardInterrupt:
        checkpoint(completed)
        raise
    finally:
        bar.close()
        metrics.close()
    checkpoint(config.steps)
    return out
