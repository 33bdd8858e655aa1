"""Accuracy over fixed test episodes, as mean and 95% confidence interval, with each episode's score
(in episode order, so that two models scored on the same episodes can be compared pair by pair)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fewsight.algorithms import MetaLearner
from fewsight.data import EpisodeSampler
from fewsight.data.episodes import fixed_batch_spans
from fewsight.training.distributed import gather, is_main, world


@dataclass
class Accuracy:
    """Mean accuracy over episodes and the half-width of its 95% confidence interval (normal), and the
    mean query loss."""

    mean: float
    ci95: float
    episodes: int
    loss: float = math.nan  # the queries' mean cross-entropy: validation loss, where overfitting shows first
    per_episode: list[float] = field(default_factory=list, repr=False)  # each episode's accuracy, in order

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}% over {self.episodes} episodes"


def evaluate(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    episodes: int = 1000,
    batch: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> Accuracy:
    """Adapt to each of `episodes` fixed tasks and score its queries; the learner is left in the
    mode it was in. Under torchrun the episodes are split across the processes and the interval is
    computed over all of them."""
    was_training = learner.training
    learner.eval()
    rank, processes = world()
    per_episode = [torch.zeros(0, dtype=torch.float64, device=sampler.device)]
    losses = [torch.zeros(0, dtype=torch.float64, device=sampler.device)]
    with torch.no_grad():
        batches = sampler.fixed_episodes(episodes, batch, seed, (rank, processes))
        spans = fixed_batch_spans(episodes, batch)[rank::processes]  # this process's meta-batches
        total = len(spans)
        quiet = not progress or not is_main()
        for tasks in tqdm(batches, total=total, desc="evaluating", disable=quiet, leave=False):
            logits = learner.query_logits(tasks)
            per_episode.append((logits.argmax(-1) == tasks.query_y).double().mean(1))
            losses.append(
                F.cross_entropy(logits.transpose(1, 2), tasks.query_y, reduction="none").double().mean(1)
            )
    learner.train(was_training)
    numbers = torch.tensor([n for span in spans for n in span], dtype=torch.float64, device=sampler.device)
    scores = gather(torch.cat(per_episode)).cpu()[gather(numbers).cpu().argsort()]  # episode order
    spread = scores.std().item() if len(scores) > 1 else 0.0
    loss = gather(torch.cat(losses)).mean().item()
    ci95 = 1.96 * spread / math.sqrt(len(scores))
    return Accuracy(scores.mean().item(), ci95, len(scores), loss, [round(s, 6) for s in scores.tolist()])
