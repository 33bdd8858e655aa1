"""Several weights of one run scored as one model: the mean of their logits (MAML++'s test protocol:
its code averages the raw predictions of its 5 best-validated models; `fewsight eval --weights
ensemble` over the best-STEP.pt files that `fewsight train --keep-best K` keeps)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fewsight.algorithms import MetaLearner
from fewsight.data.episodes import TaskBatch
from fewsight.errors import FewsightError
from fewsight.run.config import RunConfig
from fewsight.run.files import DamagedFile, kept_best, read_checkpoint
from fewsight.run.folder import learner_from


class Ensemble(nn.Module):
    """Learners that adapt to each task on their own; the queries' logits averaged over them."""

    def __init__(self, members: list[MetaLearner], steps: list[int]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.steps = steps  # the training step of each member's weights

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        return torch.stack([member.query_logits(batch) for member in self.members]).mean(0)


def load_ensemble(folder: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Ensemble]:
    """The run's config and the ensemble of its best-STEP.pt weights, in eval mode."""
    paths = kept_best(folder)
    if not paths:
        raise FewsightError(
            f"{folder} has no best-STEP.pt files: train with --keep-best K (K of at least 2) to keep the "
            "weights of the K best validation scores, or use --weights best"
        )
    config = RunConfig.load(folder)
    config.validate()
    members, steps = [], []
    for path in paths:
        try:
            state = read_checkpoint(path, device)
        except DamagedFile as error:
            raise error.fixed_by("delete it to score the others, or use --weights best") from error
        members.append(learner_from(config, state, folder, device))
        steps.append(int(state["step"]))
    return config, Ensemble(members, steps).eval()
