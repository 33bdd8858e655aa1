"""A run's settings (config.json) and the rules they must follow."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fewsight.algorithms.protonet import METRICS
from fewsight.algorithms.reptile import INNER_OPTIMIZERS
from fewsight.data.omniglot import DRAWERS, DRAWING_SIZE, PROTOCOLS
from fewsight.errors import FewsightError
from fewsight.nets.inputs import INPUT_NORMS
from fewsight.nets.resnet12 import NARROW_WIDTHS, WIDTHS
from fewsight.run.algorithms import (
    ADAPT_NORM,
    BASE_MIX,
    GRADIENT,
    MAMLPP_SWITCHES,
    MEMORY_LEVERS,
    METRIC,
    MODEL,
    REGISTRY,
    REPTILE_OPTIONS,
    in_words,
    taking,
)
from fewsight.run.files import CONFIG, write_json

ALGORITHMS = tuple(REGISTRY)
GRADIENT_BASED = tuple(name for name, a in REGISTRY.items() if a.family == GRADIENT)
MODEL_BASED = tuple(name for name, a in REGISTRY.items() if a.family == MODEL)
DATASETS = ("omniglot", "miniimagenet")
CHANNELS = {"omniglot": 1, "miniimagenet": 3}  # a user's own data set: 3 (RGB)
RESNET12_WIDTHS = {"resnet12": WIDTHS, "resnet12-512": NARROW_WIDTHS}  # their blocks' channels
BACKBONES = ("conv4", *RESNET12_WIDTHS)
DEFAULT_IMAGE_SIZE = {"omniglot": 28, "miniimagenet": 84}  # a user's own data set: 84
NORM_SCALE_INITS = ("ones", "uniform", "fixed")  # see fewsight.run.build.build_backbone
WEIGHT_INITS = ("torch", "xavier")  # see fewsight.nets.init.xavier
META_OPTIMIZERS = ("adam", "sgd")  # see fewsight.training.metatrain.meta_optimizer
BEST_BY = ("accuracy", "loss")  # the validation score that picks best.pt (fewsight.run.files.rank)


@dataclass
class RunConfig:
    """Everything that defines a training run; saved as config.json in the run folder."""

    dataset: str = "omniglot"
    protocol: str = "maml"
    image_size: int = 28
    algorithm: str = "maml"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    steps: int = 60000
    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int = 3
    meta_lr: float = 1e-3
    meta_optimizer: str = "adam"  # or "sgd" (momentum 0.9), as Meta-Baseline's stage
    weight_decay: float = 0.0  # of the meta-update
    meta_grad_clip: float = 0.0  # clip every meta-gradient element to [-this, this] (MAML's code: 10); 0: off
    base_mix: float = 0.0
    base_classes: int = 0
    metric: str = "euclidean"  # protonet: how queries are compared with the class prototypes
    transductive: bool = True
    joint_statistics: bool = False  # protonet: an episode's support and query images as one batch
    step_statistics: bool = False  # protonet: in training, all images of a step's tasks as one batch
    step_statistics_tasks: int = 0  # with step_statistics: tasks per batch-norm batch (0: all the step's)
    trainval: bool = False
    seed: int = 0
    val_every: int = 1000
    val_episodes: int = 200
    keep_best: int = 1  # keep the weights of this many best validation scores (best-STEP.pt)
    best_by: str = "accuracy"  # best.pt: the highest validation accuracy, or the lowest loss
    log_every: int = 50
    checkpoint_every: int = 1000
    bf16: bool = False
    cuda_graphs: bool = True  # record and replay the step where possible: on a GPU (under torchrun too)
    class_split: dict[str, list[str]] | None = None  # a user's own data set: classes of each split
    # MAML++ switches (--algorithm mamlpp turns them all on) and memory levers, for the MAML family.
    multi_step_loss: int = 0  # anneal the multi-step loss over this many meta-steps; 0: off
    learned_inner_lr: bool = False
    per_step_bn: bool = False
    first_order_steps: int = 0  # derivative-order annealing: first order for this many meta-steps
    cosine_lr: bool = False
    cosine_floor: float = 0.01  # the cosine schedule's last rate, as a fraction of meta_lr
    lr_halve_every: int = 0  # halve the meta learning rate every this many steps (ProtoNet); 0: off
    linear_lr: bool = False  # the meta learning rate falls linearly to 0 over --steps (Reptile's code)
    meta_momentum: float = 0.9  # of --meta-optimizer sgd (Reptile's code: 0, a plain step)
    inner_optimizer: str = "sgd"  # reptile: plain inner steps, or Adam's with beta1 = 0 (Reptile's code)
    inner_batch: int = 0  # reptile: images per inner step while meta-training; 0: all of a task's
    task_chunk: int = 0  # 0: all tasks of a meta-batch at once
    checkpoint_inner: bool = False
    task_loop: bool = False  # adapt the tasks one after another with plain autograd, not vmap
    backbone: str = "conv4"
    width: float = 1.0
    drop_rate: float = 0.0
    norm_scale_init: str = "ones"  # batch-norm scales start at 1, drawn from U(0, 1), or "fixed" at 1
    weight_init: str = "torch"  # torch's default initialisation, or "xavier" (MAML's code)
    input_norm: str = "none"  # images go in in [0, 1], or normalised with ImageNet's statistics
    adapt_norm: bool = True  # the MAML family: the inner loop adapts the batch-norm scales and shifts too
    augment: bool = False
    init: str = ""  # the run whose backbone weights started this one

    def validate(self) -> None:
        """Raise a FewsightError naming the fix for settings that cannot work."""
        for field in fields(self):  # config.json may have been edited by hand
            value, expected = getattr(self, field.name), type(field.default)
            if field.name == "class_split":
                expected = dict if value is not None else type(None)
            if not _has_type(value, expected):
                raise FewsightError(f"setting {field.name} must be {expected.__name__}, not {value!r}")
        if self.algorithm not in ALGORITHMS:
            raise FewsightError(f"unknown algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        if self.dataset not in DATASETS and not Path(self.dataset).is_absolute():
            raise FewsightError(
                f"unknown dataset {self.dataset!r}: use {' or '.join(DATASETS)}, or the path of your own "
                "folder of class subfolders or CSV of file,label rows"
            )
        if self.protocol not in PROTOCOLS:
            raise FewsightError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        positive = (
            "ways",
            "shots",
            "queries",
            "meta_batch",
            "steps",
            "inner_steps",
            "eval_inner_steps",
            "val_every",
            "val_episodes",
            "keep_best",
            "log_every",
            "checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise FewsightError(f"--{name.replace('_', '-')} must be at least 1")
        if self.ways < 2:
            raise FewsightError("--ways must be at least 2")
        if self.dataset == "omniglot" and self.shots + self.queries > DRAWERS:
            raise FewsightError(
                f"tasks with {self.shots} shots + {self.queries} queries need classes of at least "
                f"{self.shots + self.queries} images, but Omniglot has {DRAWERS}; lower --shots or --queries"
            )
        largest = DRAWING_SIZE if self.dataset == "omniglot" else 512
        if not 16 <= self.image_size <= largest:
            raise FewsightError(
                f"--image-size must be between 16 (Conv4 halves it four times) and {largest}"
                + (" (the size of Omniglot's drawings)" if self.dataset == "omniglot" else "")
            )
        if not all(math.isfinite(lr) and lr > 0 for lr in (self.inner_lr, self.meta_lr)):
            raise FewsightError("--inner-lr and --meta-lr must be positive and finite")
        if not 0 <= self.base_mix <= 1:
            raise FewsightError("--base-mix is a probability: use a value in [0, 1]")
        if self.base_mix > 0 and self.algorithm not in taking(BASE_MIX):
            raise FewsightError(f"--base-mix applies to --algorithm {in_words(taking(BASE_MIX), 'or')} only")
        if self.metric not in METRICS:
            raise FewsightError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.metric != "euclidean" and self.algorithm not in taking(METRIC):
            raise FewsightError(
                f"--metric applies to --algorithm {in_words(taking(METRIC), 'or')} only; drop it"
            )
        for name in ("multi_step_loss", "first_order_steps", "task_chunk", "lr_halve_every"):
            if getattr(self, name) < 0:
                raise FewsightError(f"--{name.replace('_', '-')} must be 0 (off) or more")
        if not (math.isfinite(self.cosine_floor) and 0 <= self.cosine_floor <= 1):
            raise FewsightError("--cosine-floor is a fraction of --meta-lr: use a value in [0, 1]")
        if self.cosine_floor != RunConfig.cosine_floor and not self.cosine_lr and self.algorithm != "mamlpp":
            raise FewsightError("--cosine-floor shapes the cosine schedule: add --cosine-lr, or drop it")
        schedules = [
            flag
            for flag, on in (
                ("--cosine-lr (which --algorithm mamlpp turns on)", self.cosine_lr),
                ("--lr-halve-every", self.lr_halve_every),
                ("--linear-lr", self.linear_lr),
            )
            if on
        ]
        if len(schedules) > 1:
            raise FewsightError(f"{' and '.join(schedules)} are schedules of one rate: keep one")
        if not (math.isfinite(self.meta_momentum) and 0 <= self.meta_momentum < 1):
            raise FewsightError("--meta-momentum must be in [0, 1)")
        if self.meta_momentum != RunConfig.meta_momentum and self.meta_optimizer != "sgd":
            raise FewsightError("--meta-momentum is the momentum of --meta-optimizer sgd: add it, or drop it")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            known = ", ".join(INNER_OPTIMIZERS)
            raise FewsightError(f"unknown --inner-optimizer {self.inner_optimizer!r}; use one of {known}")
        if self.inner_batch < 0:
            raise FewsightError("--inner-batch must be 0 (all of a task's images) or more")
        reptile = [n for n in REPTILE_OPTIONS if getattr(self, n) != getattr(RunConfig, n)]
        if reptile and self.algorithm not in taking(reptile[0]):
            raise FewsightError(
                f"--{reptile[0].replace('_', '-')} applies to --algorithm "
                f"{in_words(taking(reptile[0]), 'or')} only; drop it"
            )
        images = self.ways * (self.shots + self.queries)
        if self.inner_batch > images:
            raise FewsightError(
                f"--inner-batch {self.inner_batch} is more than a task's {images} images "
                "(--ways x (--shots + --queries)); lower it, or 0 for all of them"
            )
        switches = [n for n in MAMLPP_SWITCHES if getattr(self, n) and self.algorithm not in taking(n)]
        if switches:
            names = in_words(taking(switches[0]), "or")
            raise FewsightError(f"the MAML++ switches apply to --algorithm {names} only; drop them")
        memory = [n for n in MEMORY_LEVERS if getattr(self, n) and self.algorithm not in taking(n)]
        if memory:
            raise FewsightError(
                f"--task-chunk, --checkpoint-inner and --task-loop apply to "
                f"{in_words(taking(memory[0]), 'and')} only"
            )
        if self.best_by not in BEST_BY:
            raise FewsightError(f"unknown --best-by {self.best_by!r}; use one of {', '.join(BEST_BY)}")
        if self.meta_optimizer not in META_OPTIMIZERS:
            raise FewsightError(
                f"unknown --meta-optimizer {self.meta_optimizer!r}; use one of {', '.join(META_OPTIMIZERS)}"
            )
        for name in ("weight_decay", "meta_grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise FewsightError(f"--{name.replace('_', '-')} must be 0 (off) or more")
        for flag in ("joint_statistics", "step_statistics"):
            if getattr(self, flag) and (self.algorithm != "protonet" or not self.transductive):
                raise FewsightError(
                    f"--{flag.replace('_', '-')} applies to --algorithm protonet, transductive: "
                    "drop it or --non-transductive"
                )
        if self.step_statistics_tasks and (
            not self.step_statistics
            or self.step_statistics_tasks < 0
            or self.meta_batch % self.step_statistics_tasks
        ):
            raise FewsightError(
                "--step-statistics-tasks needs --step-statistics and must divide --meta-batch "
                f"{self.meta_batch} (or be 0: all the step's tasks)"
            )
        check_seed(self.seed)
        check_backbone(self.backbone, self.width, self.drop_rate)
        if not self.adapt_norm and self.algorithm not in taking(ADAPT_NORM):
            raise FewsightError(
                f"--no-adapt-norm applies to --algorithm {in_words(taking(ADAPT_NORM), 'or')} only; drop it"
            )
        checked = (
            ("norm_scale_init", NORM_SCALE_INITS),
            ("weight_init", WEIGHT_INITS),
            ("input_norm", INPUT_NORMS),
        )
        for name, known in checked:
            value = getattr(self, name)
            if value not in known:
                flag = name.replace("_", "-")
                raise FewsightError(f"unknown --{flag} {value!r}; use one of {', '.join(known)}")

    def save(self, folder: Path) -> None:
        """Write config.json into the run folder, atomically."""
        write_json(asdict(self), folder / CONFIG)

    @classmethod
    def load(cls, folder: Path) -> RunConfig:
        path = Path(folder) / CONFIG
        if not path.is_file():
            raise FewsightError(
                f"{folder} is not a run folder (no config.json); pass the --out of a training run"
            )
        try:
            saved = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FewsightError(f"{path} is not valid JSON ({error})") from error
        if not isinstance(saved, dict):
            raise FewsightError(f"{path} does not hold a JSON object of settings")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def _has_type(value: object, expected: type) -> bool:
    """Whether a setting has its field's type (an int may stand for a float; a bool is no int)."""
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    return isinstance(value, (int, float) if expected is float else expected)


def check_seed(seed: int) -> None:
    """Raise a FewsightError unless `seed` is one torch's generators accept."""
    if not 0 <= seed < 2**64:
        raise FewsightError("--seed must be between 0 and 2**64 - 1")


def check_backbone(backbone: str, width: float, drop_rate: float) -> None:
    """Raise a FewsightError for a backbone setting that cannot work."""
    if backbone not in BACKBONES:
        raise FewsightError(f"unknown backbone {backbone!r}; use one of {', '.join(BACKBONES)}")
    if not (math.isfinite(width) and width > 0):
        raise FewsightError("--width must be a positive number (1 for the papers' widths)")
    if not 0 <= drop_rate < 1:
        raise FewsightError("--drop-rate is a probability: use a value in [0, 1)")
    if drop_rate > 0 and backbone not in RESNET12_WIDTHS:
        raise FewsightError(f"--drop-rate applies to --backbone {' or '.join(RESNET12_WIDTHS)} only")
