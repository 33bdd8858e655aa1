"""MAML++'s multi-step loss weights, a plain function of the meta-step (so a resumed run follows
them exactly)."""

from __future__ import annotations

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
