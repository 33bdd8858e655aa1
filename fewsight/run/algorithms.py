"""The algorithms a run can train, in one table: each name's family, the settings that apply to it
only, the settings its name turns on (MAML++), whether `fewsight bench` times it, and how a run's
config builds it around a backbone. A new algorithm is its class in fewsight/algorithms/ and one row
here; the command line, config.json's checks, `fewsight bench` and the model loaders read this table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from fewsight.algorithms import (
    ANIL,
    LEO,
    MAML,
    MetaLearner,
    MetaSGD,
    ProtoNet,
    Reptile,
    TaskHypernetwork,
    WeightPrediction,
)

if TYPE_CHECKING:
    from fewsight.run.config import RunConfig

GRADIENT = "maml"  # the MAML family: a head over the training ways, adapted by gradient steps
MODEL = "model-based"  # a head predicted from the support set, for any number of ways

# Settings that apply to some algorithms only (the `options` of a row).
BASE_MIX, METRIC, ADAPT_NORM = "base_mix", "metric", "adapt_norm"
MAMLPP_SWITCHES = ("multi_step_loss", "learned_inner_lr", "per_step_bn", "first_order_steps")
MEMORY_LEVERS = ("task_chunk", "checkpoint_inner", "task_loop")
REPTILE_OPTIONS = ("inner_optimizer", "inner_batch")


@dataclass(frozen=True)
class Algorithm:
    """One row of the table: what the rest of fewsight needs to know about an algorithm."""

    family: str  # GRADIENT or MODEL
    build: Callable[[RunConfig, nn.Module], MetaLearner]  # the learner, around the run's backbone
    options: tuple[str, ...] = ()  # settings that apply to this algorithm (and the others that name them)
    preset: Callable[[RunConfig], None] | None = None  # settings its name turns on, from the run's length
    inner_steps: int | None = None  # its default inner steps, at training and test time (None: RunConfig's)
    bench: bool = True  # timed by `fewsight bench` (a variant of another row's step is not)


def _gradient_options(config: RunConfig) -> dict:
    """The MAML family's inner loop and memory levers, from the run's config."""
    options = dict(
        inner_lr=config.inner_lr,
        steps=config.inner_steps,
        eval_steps=config.eval_inner_steps,
        transductive=config.transductive,
    )
    if config.task_chunk or config.checkpoint_inner:
        options.update(task_chunk=config.task_chunk, checkpoint_inner=config.checkpoint_inner)
    if config.task_loop:
        options.update(per_task=True)
    return options


def _maml(config: RunConfig, backbone: nn.Module) -> MAML:
    return MAML(
        backbone,
        adapt_norm=config.adapt_norm,
        first_order=config.algorithm == "fomaml",
        multi_step_loss=config.multi_step_loss,
        learned_rates=config.learned_inner_lr,
        per_step_norm=config.per_step_bn,
        first_order_steps=config.first_order_steps,
        **_gradient_options(config),
    )


def mamlpp_preset(config: RunConfig) -> None:
    """Turn on MAML++'s switches for --algorithm mamlpp, with schedules from the run's length: the
    multi-step loss annealed over the first 10% of the steps, first order for the first third."""
    if config.algorithm != "mamlpp":
        return
    config.learned_inner_lr = config.per_step_bn = config.cosine_lr = True
    config.multi_step_loss = config.multi_step_loss or max(1, config.steps // 10)
    config.first_order_steps = config.first_order_steps or config.steps // 3


def _protonet(config: RunConfig, backbone: nn.Module) -> ProtoNet:
    """ProtoNet with the run's metric and batch-norm batching."""
    return ProtoNet(
        backbone,
        config.transductive,
        config.metric,
        config.joint_statistics,
        config.step_statistics,
        config.step_statistics_tasks,
    )


def _mamlpp(config: RunConfig, backbone: nn.Module) -> MAML:
    config = copy.copy(config)
    mamlpp_preset(config)
    return _maml(config, backbone)


def _hypernet(config: RunConfig, backbone: nn.Module) -> TaskHypernetwork:
    from fewsight.run.build import task_encoder  # build.py reads this table

    return TaskHypernetwork(backbone, task_encoder(config), config.transductive)


REGISTRY: dict[str, Algorithm] = {
    "maml": Algorithm(GRADIENT, _maml, (*MAMLPP_SWITCHES, *MEMORY_LEVERS, ADAPT_NORM)),
    "fomaml": Algorithm(GRADIENT, _maml, (*MAMLPP_SWITCHES, *MEMORY_LEVERS, ADAPT_NORM)),
    "metasgd": Algorithm(GRADIENT, lambda c, b: MetaSGD(b, **_gradient_options(c)), MEMORY_LEVERS),
    "anil": Algorithm(GRADIENT, lambda c, b: ANIL(b, **_gradient_options(c)), MEMORY_LEVERS),
    "reptile": Algorithm(
        GRADIENT,
        lambda c, b: Reptile(
            b, inner_optimizer=c.inner_optimizer, inner_batch=c.inner_batch, **_gradient_options(c)
        ),
        REPTILE_OPTIONS,
        bench=False,
    ),
    "mamlpp": Algorithm(
        GRADIENT,
        _mamlpp,
        (*MAMLPP_SWITCHES, *MEMORY_LEVERS, ADAPT_NORM),
        preset=mamlpp_preset,
        inner_steps=5,  # as in the MAML++ paper
        bench=False,
    ),
    "protonet": Algorithm(MODEL, _protonet, (METRIC,)),
    "weightpred": Algorithm(
        MODEL,
        lambda c, b: WeightPrediction(b, b.feature_size, c.base_classes, c.base_mix, c.transductive),
        (BASE_MIX,),
    ),
    "hypernet": Algorithm(MODEL, _hypernet),
    "leo": Algorithm(
        MODEL,
        lambda c, b: LEO(
            b, b.feature_size, steps=c.inner_steps, inner_lr=c.inner_lr, transductive=c.transductive
        ),
    ),
}


def taking(option: str) -> tuple[str, ...]:
    """The algorithms a setting applies to, in the table's order."""
    return tuple(name for name, algorithm in REGISTRY.items() if option in algorithm.options)


def in_words(names: tuple[str, ...], last: str) -> str:
    """'a, b or c' (last="or"), for an error message."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def apply_preset(config: RunConfig) -> None:
    """Turn on the settings the run's algorithm name stands for (--algorithm mamlpp), if any."""
    algorithm = REGISTRY.get(config.algorithm)
    if algorithm is not None and algorithm.preset is not None:
        algorithm.preset(config)
