"""A trained run or bundled model scored on fixed test episodes, with what the papers report beside a
score (`fewsight eval`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fewsight.algorithms import MetaLearner, ParameterPredictor, ProtoNet
from fewsight.data import EpisodeSampler
from fewsight.errors import FewsightError
from fewsight.nets.population import (
    estimate_population_statistics,
    has_population_statistics,
    save_population_statistics,
)
from fewsight.run.build import load_split
from fewsight.run.config import RunConfig, check_seed
from fewsight.run.folder import checkpoint_step
from fewsight.run.warmstart import backbone_of
from fewsight.training.evaluate import Accuracy, evaluate
from fewsight.training.pretrain import is_pretrain_run
from fewsight.use.ensemble import Ensemble, load_ensemble
from fewsight.use.models import BUNDLED, bundled_names, load_model, max_ways, resolve_run

POPULATION_IMAGES = 10_000  # training images behind norm="population"


@dataclass
class Evaluation:
    """A model's accuracy on fixed episodes and how it was measured."""

    accuracy: Accuracy
    config: RunConfig
    learner: MetaLearner
    folder: Path
    split: str
    seed: int
    ways: int
    shots: int
    queries: int
    norm: str  # "population" (fixed batch-norm statistics) or "task"
    weights: str

    def __str__(self) -> str:
        scored = f" ({self.learner.metric})" if isinstance(self.learner, ProtoNet) else ""
        scored += ", population batch-norm statistics" if self.norm == "population" else ""
        shape = f"{self.ways}-way {self.shots}-shot"
        return f"{self.config.algorithm}{scored} {shape}, {self.split}: {self.accuracy}{self.provenance()}"

    def provenance(self) -> str:
        """Which weights were scored and how far their run had trained: "; the last checkpoint's
        weights, training unfinished (step 152 of 60,000)"; nothing for a model that records no step."""
        if isinstance(self.learner, Ensemble):
            steps = ", ".join(f"{step:,}" for step in self.learner.steps)
            return f"; an ensemble of the {len(self.learner.steps)} best-validated weights (steps {steps})"
        step = checkpoint_step(self.folder, self.weights)
        if step is None:
            return ""
        which = "best.pt's weights" if self.weights == "best" else "the last checkpoint's weights"
        if is_pretrain_run(self.folder):
            return f"; {which}, step {step:,}"
        if step < self.config.steps:
            return f"; {which}, training unfinished (step {step:,} of {self.config.steps:,})"
        return f"; {which}, step {step:,} of {self.config.steps:,}"

    def record(self) -> dict:
        """The score with its protocol, as `fewsight eval --json` prints it."""
        details = {
            "split": self.split,
            "seed": self.seed,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
        }
        if isinstance(self.learner, ProtoNet):
            details["metric"] = self.learner.metric
        details["norm"] = self.norm
        details["weights"] = self.weights
        ensemble = isinstance(self.learner, Ensemble)
        details["step"] = self.learner.steps if ensemble else checkpoint_step(self.folder, self.weights)
        transductive = self.config.transductive and self.norm == "task"
        model = self.learner.members[0] if ensemble else self.learner
        protocol = _protocol(self.config, model, transductive, is_pretrain_run(self.folder))
        return {**asdict(self.accuracy), **details, "algorithm": self.config.algorithm, **protocol}


def evaluate_run(
    model: str | os.PathLike,
    device: torch.device,
    *,
    ways: int | None = None,
    shots: int | None = None,
    queries: int | None = None,
    episodes: int = 1000,
    batch: int = 10,
    split: str = "test",
    seed: int = 0,
    metric: str | None = None,
    norm: str | None = None,
    keep_statistics: bool = False,
    weights: str = "last",
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score a run folder or bundled model on `episodes` fixed episodes of its data set's `split`
    (ways, shots and queries: the run's unless given). `metric` scores a ProtoNet (or pretrain run)
    with another metric; `norm="population"` fixes the batch-norm statistics to those of up to
    POPULATION_IMAGES training images (the model-based family), written to RUN/population.pt with
    `keep_statistics`; by default the model normalises as it ships. `weights="best"` scores best.pt,
    "ensemble" the mean logits of the best-STEP.pt weights (--keep-best)."""
    if episodes < 1 or batch < 1:
        raise FewsightError("--episodes and --batch must be at least 1")
    for flag, value, least in (("--ways", ways, 2), ("--shots", shots, 1), ("--queries", queries, 1)):
        if value is not None and value < least:  # 0 would otherwise read as "the run's"
            raise FewsightError(f"{flag} must be at least {least}")
    check_seed(seed)
    if not Path(model).exists() and str(model) not in bundled_names():
        raise FewsightError(f"no run folder at {model}; pass the --out of a training run or a bundled model")
    if keep_statistics and norm != "population":
        raise FewsightError("--keep-statistics keeps population statistics: add --norm population")
    if weights == "ensemble" and (norm == "population" or metric is not None):
        raise FewsightError(
            "--weights ensemble scores the run as it trained: drop --norm population and --metric"
        )
    folder = resolve_run(model)
    if keep_statistics and folder.parent == BUNDLED:
        raise FewsightError(
            f"--keep-statistics would change the bundled model {folder.name} for every later use; "
            f"copy its folder (cp -r {folder} MYMODEL) and keep them there"
        )
    if weights == "ensemble":
        config, learner = load_ensemble(folder, device)
    else:
        config, learner = load_model(folder, device, weights, "task" if norm == "task" else "model")
    if metric is not None:
        if not isinstance(learner, ProtoNet):
            raise FewsightError(
                f"--metric applies to protonet and pretrain runs, not {config.algorithm}; drop it"
            )
        learner = learner.with_metric(metric)
    ways = config.ways if ways is None else ways
    if max_ways(config) not in (None, ways):
        raise FewsightError(f"this {config.algorithm} model takes exactly {config.ways} ways; drop --ways")
    if norm == "population" and not has_population_statistics(learner):
        _set_population_statistics(learner, config, data_root, progress)
    if keep_statistics:
        save_population_statistics(learner, folder)
    used = "population" if has_population_statistics(learner) else "task"
    shots = config.shots if shots is None else shots
    queries = config.queries if queries is None else queries
    data = load_split(config, split, data_root, progress)
    sampler = EpisodeSampler(data, ways, shots, queries, device)
    accuracy = evaluate(learner, sampler, episodes, batch, seed, progress)
    return Evaluation(accuracy, config, learner, folder, split, seed, ways, shots, queries, used, weights)


def _set_population_statistics(
    learner: MetaLearner, config: RunConfig, data_root: str | os.PathLike | None, progress: bool
) -> None:
    """Fix the learner's batch-norm statistics to those of up to POPULATION_IMAGES training images
    (a fixed random choice)."""
    if not isinstance(learner, ParameterPredictor):
        raise FewsightError(
            f"--norm population applies to the model-based family and pretrain runs, not "
            f"{config.algorithm}, whose adapted weights are tied to each task's statistics; drop it"
        )
    images = load_split(config, "train", data_root, progress).images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:POPULATION_IMAGES]
    estimate_population_statistics(learner.encoder, images[chosen])


def _protocol(config: RunConfig, learner: MetaLearner, transductive: bool, pretrained: bool) -> dict:
    """What the papers report beside a score: backbone and its widths, image size, how it was trained
    (the ways and shots of its episodes, or supervised pre-training on all training classes, whose
    ways and shots are null), and whether the queries were normalised together (transductive)."""
    return {
        "backbone": config.backbone,
        "widths": backbone_of(learner).block_channels,
        "image_size": config.image_size,
        "training": "pretrain" if pretrained else "episodic",
        "trained_ways": None if pretrained else config.ways,
        "trained_shots": None if pretrained else config.shots,
        "transductive": transductive,
    }
