"""Base-class pre-training: ordinary supervised training of a backbone and a linear head over all the
training classes (64 for miniImageNet), the recipe behind Baseline++, RFS and Meta-Baseline.

SGD with momentum 0.9 and weight decay, a cosine learning-rate schedule (or Meta-Baseline's tenfold
drop at one epoch), optional augmentation on the device, bf16 autocast and channels-last images.
The run folder is also a ProtoNet run: its config.json is a RunConfig (algorithm protonet) with the
pre-training settings under "pretrain", and its checkpoint's "learner" holds the ProtoNet's weights,
that is, the backbone. So `fewsight eval RUN`
scores the pre-trained backbone as a nearest-centroid classifier (Meta-Baseline's Classifier-Baseline,
with `metric="cosine"`), and `fewsight train --init RUN` starts any algorithm's backbone from it.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewsight.data import EpisodeSampler
from fewsight.data.augment import Augment, augment
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import normalised_in_groups
from fewsight.nets.first_order import first_order
from fewsight.nets.layout import for_convolution
from fewsight.run.build import assign_classes, build_learner, load_split
from fewsight.run.config import RunConfig
from fewsight.run.files import CONFIG, write_json
from fewsight.run.folder import start_or_resume
from fewsight.run.lock import holds_run_folder
from fewsight.training import loop
from fewsight.training.device import autocast, default_device
from fewsight.training.evaluate import Accuracy, evaluate
from fewsight.training.graphs import GraphedStep, plain_learning_rates, recorded, set_learning_rate
from fewsight.training.metatrain import MOMENTUM, VALIDATION_SEED
from fewsight.training.schedules import cosine_lr, dropped_lr

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
    input_norm: str = "none"
    drop_rate: float = 0.1
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    augment: bool = False
    crop_from: int = 0  # with augment: training images decoded at this size, cropped to image_size
    jitter: bool = True  # colour jitter as part of --augment (Meta-Baseline's classifier has none)
    lr_drop_epoch: int = 0  # 0: the cosine schedule; else the rate times 0.1 after this epoch
    bf16: bool = False
    bn_batch: int = 0  # images per batch-norm batch at training; 0: the whole batch
    cuda_graphs: bool = True  # record the step once and replay it, on a GPU without DropBlock
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
        if not isinstance(self.lr_drop_epoch, int) or self.lr_drop_epoch < 0:
            raise FewsightError("--lr-drop-epoch must be 0 (the cosine schedule) or an epoch number")
        if (
            not isinstance(self.bn_batch, int)
            or self.bn_batch < 0
            or (self.bn_batch and self.batch_size % self.bn_batch)
        ):
            raise FewsightError(
                f"--bn-batch must divide --batch-size {self.batch_size} (or be 0: the whole batch)"
            )
        if not isinstance(self.crop_from, int) or self.crop_from < 0:
            raise FewsightError("--crop-from must be a number of pixels (or 0: crop from --image-size)")
        if self.crop_from and not self.augment:
            raise FewsightError("--crop-from sets where --augment's crops come from: add --augment")
        if self.crop_from and self.image_size and self.crop_from < self.image_size:
            raise FewsightError(f"--crop-from must be at least --image-size ({self.image_size})")
        if not self.jitter and not self.augment:
            raise FewsightError("--no-jitter changes --augment: add --augment, or drop --no-jitter")

    def save(self, folder: Path) -> None:
        """Write config.json: the ProtoNet RunConfig, with these settings under "pretrain"."""
        settings = {**asdict(self.run_config()), "pretrain": asdict(self)}
        write_json(settings, folder / CONFIG)

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


def grouped_features(backbone: nn.Module, images: torch.Tensor, group: int) -> torch.Tensor:
    """The backbone's features of (B, C, H, W) images, batch norm normalising them in consecutive
    groups of `group` (0: all B at once), with torch's own layers (nothing differentiates pre-training
    twice: `first_order`). Meta-Baseline's classifier trains on 4 GPUs, each normalising its own 32 of
    the 128 images of a step (nn.DataParallel); groups reproduce that."""
    grouped = normalised_in_groups(backbone, group) if 0 < group < len(images) else nullcontext()
    with first_order(backbone), grouped:
        return backbone(images)


def records(config: PretrainConfig, device: torch.device) -> bool:
    """Whether pre-training records its step as a CUDA graph: on a GPU, unless --no-cuda-graphs, and
    without DropBlock, whose rate changes every step while it ramps up (and a graph replays the one
    it recorded)."""
    return config.cuda_graphs and device.type == "cuda" and not config.drop_rate


def _pretrain_settings(folder: str | os.PathLike) -> dict | None:
    """The "pretrain" settings of a run folder's config.json; None for a training run."""
    settings = json.loads((Path(folder) / CONFIG).read_text()).get("pretrain")
    return settings if isinstance(settings, dict) else None


def is_pretrain_run(folder: str | os.PathLike) -> bool:
    """Whether the run folder holds a `fewsight pretrain` run (its config.json has "pretrain")."""
    return _pretrain_settings(folder) is not None


@holds_run_folder
def pretrain(
    config: PretrainConfig,
    out: str | os.PathLike,
    *,
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
    config, state = start_or_resume(
        config,
        out,
        resume,
        length="epochs",
        adjustable=("log_every", "val_episodes", "checkpoint_every", "cuda_graphs"),  # may change on resume
        cosine=lambda saved: not saved.lr_drop_epoch,
        keys=_RESUMABLE,
        why_not="fewsight pretrain did not write it, so it cannot be resumed",
        device=device,
    )
    config.validate()
    autocast(device, config.bf16)  # refuses --bf16 on a GPU without bf16 before any data is loaded
    run = config.run_config()
    assign_classes(run)
    config.class_split = run.class_split
    source = replace(run, image_size=config.crop_from) if config.crop_from else run
    data = load_split(source, "trainval" if config.trainval else "train", data_root, progress)
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
    learner.to(memory_format=torch.channels_last)  # as its images (fewsight.nets.layout)
    parameters = [*learner.parameters(), *head.parameters()]
    graphs = records(config, device)
    optimizer = torch.optim.SGD(  # fused where recorded: it reads its learning rate on the device
        parameters, lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay, fused=graphs or None
    )
    shuffler = torch.Generator().manual_seed(config.seed)  # the order of each epoch (CPU)
    generator = torch.Generator(device).manual_seed(config.seed)  # augmentation (device)
    per_epoch = len(labels) // config.batch_size  # the last partial batch of an epoch is dropped
    total = config.epochs * per_epoch
    order = None
    if state is not None:
        learner.load_state_dict(state["learner"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        plain_learning_rates(optimizer)  # the saved run may have trained with or without a graph
        for group in optimizer.param_groups:
            group["fused"] = graphs or None
        shuffler.set_state(state["shuffler"].cpu())
        order = state["order"].to(device)
        generator.set_state(state["generator"].cpu())

    settings = Augment() if config.jitter else Augment(brightness=0, contrast=0, saturation=0)

    def learning_rate(number: int) -> float:
        if config.lr_drop_epoch:
            return dropped_lr(config.lr, number, config.lr_drop_epoch * per_epoch)
        return cosine_lr(config.lr, number, total, floor_fraction=0.0)

    def train(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and SGD step on one batch: what a CUDA graph records."""
        with autocast(device, config.bf16):
            logits = head(grouped_features(backbone, x, config.bn_batch))
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=not graphs)  # a graph keeps the gradients' addresses
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.argmax(-1) == y).float().mean()

    graphed: GraphedStep | None = None

    def step(number: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order, graphed, graphs
        index = (number - 1) % per_epoch
        if index == 0:
            order = torch.randperm(len(labels), generator=shuffler).to(device)
        chosen = order[index * config.batch_size : (index + 1) * config.batch_size]
        x, y = images[chosen].float() / 255, labels[chosen]
        if config.augment:
            x = augment(x, generator, settings, run.image_size)
        x = for_convolution(x)
        set_learning_rate(optimizer, learning_rate(number))
        if hasattr(backbone, "set_drop_rate"):
            backbone.set_drop_rate(config.drop_rate * min(1.0, number / (DROP_RAMP * total)))
        if graphs and graphed is None:
            model = nn.ModuleList([learner, head])
            graphed = recorded(lambda: GraphedStep(train, model, optimizer, (x, y)), optimizer)
            graphs = graphed is not None
        return train(x, y) if graphed is None else graphed(x, y)

    def end_of_epoch(number: int) -> bool:
        return number % per_epoch == 0

    def validate(number: int, out_of_time: bool = False) -> Accuracy | None:
        if validation is None or not end_of_epoch(number):
            return None
        return evaluate(learner, validation, config.val_episodes, 25, VALIDATION_SEED)

    plan = loop.Plan(
        name="pre-training",
        total=total,
        step=step,
        state=lambda: {
            "learner": learner.state_dict(),
            "head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "shuffler": shuffler.get_state(),
            "order": order,
            "generator": generator.get_state(),
        },
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        throughput=("images_per_s", config.batch_size),
        fix="lower --lr",
        columns=lambda number: {
            "epoch": number / per_epoch,
            "lr": learning_rate(number),
        },
        log_at=end_of_epoch,
        validate=validate,
        postfix=lambda row: {"epoch": math.ceil(row["epoch"])},
    )
    return loop.run(plan, config, out, state, device, progress=progress)
