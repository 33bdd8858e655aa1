"""Schedules over meta-training steps, as plain functions of the step (so a resumed run follows them
exactly): MAML++'s multi-step loss weights and the meta learning rate, cosine-annealed (MAML++) or
halved at intervals (Snell et al.)."""

from __future__ import annotations

import math

MSL_FLOOR = 0.03  # MAML++: each earlier step keeps at least 0.03 / steps of the loss


def multi_step_weights(steps: int, step: int, anneal: int) -> list[float]:
    """Weights (summing to 1) of the query loss after each of `steps` inner steps at meta-step `step`:
    uniform at step 0, moving linearly towards the last step over the first `anneal` meta-steps,
    until each earlier step is down to MSL_FLOOR / steps (Antoniou et al. 2019)."""
    if steps == 1:
        return [1.0]
    floor = MSL_FLOOR / steps
    decay = step / (steps * anneal)
    earlier = max(1 / steps - decay, floor)
    return [earlier] * (steps - 1) + [1 - (steps - 1) * earlier]


def cosine_lr(base: float, step: int, total: int, floor_fraction: float = 0.01) -> float:
    """Learning rate of meta-step `step` (1..total): from `base` down to `base * floor_fraction`
    along half a cosine (MAML++ goes from 1e-3 to 1e-5)."""
    floor = base * floor_fraction
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * (step - 1) / max(total - 1, 1)))


def halving_lr(base: float, step: int, every: int) -> float:
    """Learning rate of meta-step `step` (1..): `base`, halved after every `every` steps (ProtoNet's
    schedule: 1e-3, halved every 2,000 episodes)."""
    return base * 0.5 ** ((step - 1) // every)


def meta_learning_rate(base: float, step: int, total: int, cosine: bool, halve_every: int) -> float | None:
    """The scheduled meta learning rate of meta-step `step`, or None where the rate stays `base`."""
    if cosine:
        return cosine_lr(base, step, total)
    if halve_every:
        return halving_lr(base, step, halve_every)
    return None
