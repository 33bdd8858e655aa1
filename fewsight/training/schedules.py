"""Learning-rate schedules, as plain functions of the step (so a resumed run follows them exactly):
cosine-annealed (MAML++, pre-training), halved at intervals (Snell et al.), dropped tenfold once
(Meta-Baseline's classifier) or falling linearly (Reptile). MAML++'s multi-step loss weights, a
schedule of the algorithm itself, are in fewsight/algorithms/multistep.py."""

from __future__ import annotations

import math


def cosine_lr(base: float, step: int, total: int, floor_fraction: float = 0.01) -> float:
    """Learning rate of meta-step `step` (1..total): from `base` down to `base * floor_fraction`
    along half a cosine (MAML++ goes from 1e-3 to 1e-5)."""
    floor = base * floor_fraction
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * (step - 1) / max(total - 1, 1)))


def halving_lr(base: float, step: int, every: int) -> float:
    """Learning rate of meta-step `step` (1..): `base`, halved after every `every` steps (ProtoNet's
    schedule: 1e-3, halved every 2,000 episodes)."""
    return base * 0.5 ** ((step - 1) // every)


def dropped_lr(base: float, step: int, drop_after: int) -> float:
    """Learning rate of step `step` (1..): `base` for the first `drop_after` steps, then a tenth of it."""
    return base * (0.1 if step > drop_after else 1.0)


def linear_lr(base: float, step: int, total: int) -> float:
    """Learning rate of meta-step `step` (1..total): from `base` down towards 0 in a straight line
    (Reptile's meta step size, 1 at the first of its 100,000 steps)."""
    return base * (1 - (step - 1) / total)


def meta_learning_rate(
    base: float,
    step: int,
    total: int,
    cosine: bool,
    halve_every: int,
    cosine_floor: float = 0.01,
    linear: bool = False,
) -> float | None:
    """The scheduled meta learning rate of meta-step `step`, or None where the rate stays `base`."""
    if linear:
        return linear_lr(base, step, total)
    if cosine:
        return cosine_lr(base, step, total, cosine_floor)
    if halve_every:
        return halving_lr(base, step, halve_every)
    return None
