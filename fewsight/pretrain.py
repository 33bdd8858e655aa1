"""Base-class pre-training: ordinary supervised training of a backbone and a linear head over all the
training classes (64 for miniImageNet), the recipe behind Baseline++, RFS and Meta-Baseline.

SGD with momentum 0.9 and weight decay, a cosine learning-rate schedule, optional augmentation on the
device, bf16 autocast and channels-last on GPUs. The run folder is also a ProtoNet run: its config.json
is a RunConfig (algorithm protonet) with the pre-training settings under "pretrain", and its
checkpoint's "learner" holds the ProtoNet's weights, that is, the backbone. So `fewsight eval RUN`
scores the pre-trained backbone as a nearest-centroid classifier (Meta-Baseline's Classifier-Baseline,
with `metric="cosine"`), and `fewsight train --init RUN` starts any algorithm's backbone from it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fewsight.data import EpisodeSampler
from fewsight.data.augment import augment
from fewsight.errors import FewsightError
from fewsight.evaluate import evaluate
from fewsight.run.build import assign_classes, build_learner, load_split
from fewsight.run.config import RunConfig
from fewsight.run.files import keep_metrics_until, save_checkpoint, write_atomic
from fewsight.run.folder import (
    check_new_folder,
    merge_resume_settings,
    random_states,
    restore_random_states,
    resumable_checkpoint,
    resumed_length,
)
from fewsight.schedules import cosine_lr
from fewsight.signals import StopRequests
from fewsight.train import VALIDATION_SEED
from fewsight.training.device import autocast, default_device

MOMENTUM = 0.9
DROP_RAMP = 0.5  # DropBlock's rate rises linearly to its value over this fraction of the steps
VALIDATION_WAYS, VALIDATION_QUERIES = 5, 15  # of the 1-shot validation episodes
_RESUMABLE = (
    "learner",
    "head",
    "optimizer",
    "shuffler",
    "order",
    "generator",
    "torch_rng",
    "step",
    "interval",
)


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run; saved under "pretrain" in config.json."""

    dataset: str = "miniimagenet"
    protocol: str = "maml"
    image_size: int = 84
    backbone: str = "resnet12"
    width: float = 1.0
    drop_rate: float = 0.1
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    augment: bool = False
    bf16: bool = False
    seed: int = 0
    trainval: bool = False
    val_episodes: int = 200
    log_every: int = 50
    checkpoint_every: int = 1000
    class_split: dict[str, list[str]] | None = None
    metric: str = "euclidean"  # how the run scores the backbone (validation, eval): nearest centroid

    def run_config(self) -> RunConfig:
        """The ProtoNet run this pre-training run also is (what eval, predict and --init read)."""
        shared = {f.name: getattr(self, f.name) for f in fields(RunConfig) if hasattr(self, f.name)}
        return RunConfig(**shared, algorithm="protonet")

    def validate(self) -> None:
        """Raise a FewsightError naming the fix for settings that cannot work."""
        self.run_config().validate()
        for name in ("epochs", "batch_size", "val_episodes", "log_every", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise FewsightError(f"--{name.replace('_', '-')} must be an integer of at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FewsightError("--lr must be positive and finite")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise FewsightError("--weight-decay must be zero or positive")

    def save(self, folder: Path) -> None:
        """Write config.json: the ProtoNet RunConfig, with these settings under "pretrain"."""
        settings = {**asdict(self.run_config()), "pretrain": asdict(self)}
        write_atomic((json.dumps(settings, indent=2) + "\n").encode(), folder / "config.json")

    @classmethod
    def load(cls, folder: Path) -> PretrainConfig:
        RunConfig.load(folder)  # a one-line error for a missing or unreadable config.json
        settings = _pretrain_settings(folder)
        if settings is None:
            raise FewsightError(
                f"{folder} is a training run, not a pre-training run; resume it with fewsight train"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in known})


def _pretrain_settings(folder: str | os.PathLike) -> dict | None:
    """The "pretrain" settings of a run folder's config.json; None for a training run."""
    settings = json.loads((Path(folder) / "config.json").read_text()).get("pretrain")
    return settings if isinstance(settings, dict) else None


def is_pretrain_run(folder: str | os.PathLike) -> bool:
    """Whether the run folder holds a `fewsight pretrain` run (its config.json has "pretrain")."""
    return _pretrain_settings(folder) is not None


def pretrain(
    config: PretrainConfig,
    out: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Pre-train into the run folder `out` (or continue it with resume=True, where `epochs` may be
    raised: the run's own or config.epochs, the longer, the cosine schedule stretching to the new
    length); returns the folder.

    Resuming without a change ends with the same weights as an uninterrupted run (bit for bit on the
    CPU). Ctrl-C or SIGTERM finishes the step and saves a checkpoint first.
    """
    out = Path(out)
    device = torch.device(device) if device is not None else default_device()
    state = None
    if resume:
        epochs = config.epochs
        given, config = config, PretrainConfig.load(out)
        bookkeeping = ("log_every", "val_episodes", "checkpoint_every")  # may change on resume
        merge_resume_settings(given, config, bookkeeping, handled=("epochs",))
        config.epochs = resumed_length(config.epochs, epochs, "epochs", cosine=True)
        why_not = "fewsight pretrain did not write it, so it cannot be resumed"
        state = resumable_checkpoint(out, _RESUMABLE, device, why_not)
    else:
        check_new_folder(out)
    config.validate()
    autocast(device, config.bf16)  # refuses --bf16 on a GPU without bf16 before any data is loaded
    run = config.run_config()
    assign_classes(run)
    config.class_split = run.class_split
    data = load_split(run, "trainval" if config.trainval else "train", data_root, progress)
    if config.batch_size > len(data.labels):
        raise FewsightError(
            f"--batch-size {config.batch_size} exceeds the {len(data.labels)} training images"
        )
    images, labels = data.images.to(device), data.labels.to(device)
    validation = None
    if not config.trainval:
        held_out = load_split(run, "val", data_root, progress)
        queries = min(VALIDATION_QUERIES, int(held_out.images_per_class().max()) - 1)  # small data sets
        validation = EpisodeSampler(held_out, VALIDATION_WAYS, 1, queries, device)

    torch.manual_seed(config.seed)
    learner = build_learner(run).to(device)  # a ProtoNet: its encoder is the backbone
    backbone = learner.encoder
    head = nn.Linear(backbone.feature_size, data.num_classes).to(device)
    channels_last = device.type == "cuda"  # faster convolutions on GPUs (tensor cores), slower on CPUs
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    parameters = [*learner.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay)
    shuffler = torch.Generator().manual_seed(config.seed)  # the order of each epoch (CPU)
    generator = torch.Generator(device).manual_seed(config.seed)  # augmentation (device)
    per_epoch = len(labels) // config.batch_size  # the last partial batch of an epoch is dropped
    total = config.epochs * per_epoch
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    interval_steps, start, order = 0, 0, None
    if state is not None:
        learner.load_state_dict(state["learner"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        shuffler.set_state(state["shuffler"].cpu())
        order = state["order"].to(device)
        generator.set_state(state["generator"].cpu())
        restore_random_states(state, device)
        loss_sum.copy_(state["interval"]["loss"])
        correct_sum.copy_(state["interval"]["accuracy"])
        interval_steps, start = state["interval"]["steps"], state["step"]
    out.mkdir(parents=True, exist_ok=True)
    config.save(out)
    keep_metrics_until(out / "metrics.jsonl", start)

    def checkpoint(step: int) -> None:
        snapshot = {
            "learner": learner.state_dict(),
            "head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "shuffler": shuffler.get_state(),
            "order": order,
            "generator": generator.get_state(),
            **random_states(device),
            "step": step,
            "interval": {"loss": loss_sum, "accuracy": correct_sum, "steps": interval_steps},
        }
        save_checkpoint(snapshot, out, step)

    metrics = open(out / "metrics.jsonl", "a")  # noqa: SIM115
    bar = tqdm(total=total, initial=start, desc="pre-training", disable=not progress)
    interval_start = time.perf_counter()
    try:
        with StopRequests() as stop:
            for step in range(start + 1, total + 1):
                epoch, index = divmod(step - 1, per_epoch)
                if index == 0:
                    order = torch.randperm(len(labels), generator=shuffler).to(device)
                chosen = order[index * config.batch_size : (index + 1) * config.batch_size]
                x, y = images[chosen].float() / 255, labels[chosen]
                if config.augment:
                    x = augment(x, generator)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.lr, step, total, floor_fraction=0.0)
                if hasattr(backbone, "set_drop_rate"):
                    backbone.set_drop_rate(config.drop_rate * min(1.0, step / (DROP_RAMP * total)))
                with autocast(device, config.bf16):
                    logits = head(backbone(x))
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                interval_steps += 1
                loss_sum += loss.detach()
                correct_sum += (logits.argmax(-1) == y).float().mean()
                bar.update()
                end_of_epoch = index == per_epoch - 1
                if step % config.log_every == 0 or end_of_epoch:
                    row = {
                        "step": step,
                        "epoch": step / per_epoch,
                        "loss": loss_sum.item() / interval_steps,
                        "accuracy": correct_sum.item() / interval_steps,
                        "lr": cosine_lr(config.lr, step, total, floor_fraction=0.0),
                        "images_per_s": interval_steps
                        * config.batch_size
                        / (time.perf_counter() - interval_start),
                    }
                    if not math.isfinite(row["loss"]):
                        raise FewsightError(f"pre-training diverged by step {step}; lower --lr")
                    if validation is not None and end_of_epoch:
                        accuracy = evaluate(learner, validation, config.val_episodes, 25, VALIDATION_SEED)
                        row["val_accuracy"], row["val_ci95"] = accuracy.mean, accuracy.ci95
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
                    interval_steps = 0
                    loss_sum.zero_()
                    correct_sum.zero_()
                    interval_start = time.perf_counter()
                if step % config.checkpoint_every == 0 or step == total or stop.requested:
                    checkpoint(step)
                if stop.requested:
                    raise KeyboardInterrupt
    finally:
        bar.close()
        metrics.close()
    return out
