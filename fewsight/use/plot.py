"""See what a run learned, as PNG files: learning curves, one test episode with every query's
prediction marked right or wrong, and accuracy against the number of adaptation steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fewsight.algorithms import MAML, MetaLearner
from fewsight.data import EpisodeSampler
from fewsight.errors import FewsightError
from fewsight.run.build import load_split
from fewsight.run.files import make_folder
from fewsight.training.evaluate import evaluate
from fewsight.use.models import BUNDLED, load_model, resolve_run


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise FewsightError("plots need matplotlib: pip install 'fewsight[plot]'") from error
    return plt


def plot_curves(run: Path, out: Path) -> Path:
    """Training loss and accuracy (and the validation ones) against meta-steps, from metrics.jsonl:
    validation loss rising while training loss falls is overfitting, seen before accuracy shows it."""
    plt = _pyplot()
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FewsightError(f"{run} has no metrics.jsonl; train it first")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [row["step"] for row in rows]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(steps, [row["loss"] for row in rows], label="training tasks")
    with_loss = [row for row in rows if "val_loss" in row]  # runs written before it was kept have none
    if with_loss:
        loss_axis.plot(
            [r["step"] for r in with_loss],
            [r["val_loss"] for r in with_loss],
            "o-",
            label="validation episodes",
        )
    loss_axis.set(xlabel="meta-step", ylabel="query loss", yscale="log", title="loss")
    loss_axis.legend()
    accuracy_axis.plot(steps, [row["accuracy"] for row in rows], label="training tasks")
    validated = [row for row in rows if "val_accuracy" in row]
    if validated:
        accuracy_axis.errorbar(
            [r["step"] for r in validated],
            [r["val_accuracy"] for r in validated],
            yerr=[r["val_ci95"] for r in validated],
            fmt="o-",
            label="validation episodes",
        )
    accuracy_axis.set(xlabel="meta-step", ylabel="query accuracy", title="accuracy")
    accuracy_axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _show(axis, image: torch.Tensor) -> None:
    picture = image.permute(1, 2, 0).cpu().float().numpy()
    if picture.shape[-1] == 1:
        axis.imshow(picture[..., 0], cmap="gray_r", vmin=0, vmax=1)
    else:
        axis.imshow(picture.clip(0, 1))
    axis.set_xticks([])
    axis.set_yticks([])


def plot_episode(learner: MetaLearner, sampler: EpisodeSampler, out: Path, seed: int = 0) -> Path:
    """One fixed test episode: the support images, then each query framed green (right) or red (wrong)."""
    plt = _pyplot()
    learner.eval()
    tasks = next(sampler.fixed_episodes(1, 1, seed))
    with torch.no_grad():
        predicted = learner.query_logits(tasks)[0].argmax(-1)
    ways, shots, queries = sampler.ways, sampler.shots, sampler.queries
    figure, axes = plt.subplots(
        ways, shots + queries, figsize=(1.2 * (shots + queries), 1.2 * ways), squeeze=False
    )
    for label in range(ways):
        for column in range(shots):
            _show(axes[label][column], tasks.support_x[0, label * shots + column])
        axes[label][0].set_ylabel(f"class {label}")
        for column in range(queries):
            index = label * queries + column
            axis = axes[label][shots + column]
            _show(axis, tasks.query_x[0, index])
            right = int(predicted[index]) == label
            for spine in axis.spines.values():
                spine.set(color="tab:green" if right else "tab:red", linewidth=3)
            axis.set_title(f"→ {int(predicted[index])}", fontsize=7, color="black" if right else "tab:red")
    accuracy = (predicted == tasks.query_y[0]).float().mean().item()
    figure.suptitle(
        f"support ({shots} per class) | queries, framed by prediction: {100 * accuracy:.0f}% right"
    )
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def accuracy_by_steps(learner: MetaLearner, sampler: EpisodeSampler, max_steps: int, episodes: int) -> list:
    """(steps, Accuracy) for 1..max_steps inner steps (the MAML family only)."""
    if not isinstance(learner, MAML):
        raise FewsightError("model-based learners adapt in one forward pass: there are no steps to vary")
    original, results = learner.eval_steps, []
    try:
        for steps in range(1, max_steps + 1):
            learner.eval_steps = steps
            results.append((steps, evaluate(learner, sampler, episodes, batch=episodes, seed=0)))
    finally:
        learner.eval_steps = original
    return results


def plot_adaptation_steps(
    learner: MetaLearner, sampler: EpisodeSampler, out: Path, max_steps: int = 10, episodes: int = 100
) -> Path:
    """Test accuracy ± 95% interval against the number of inner steps at test time."""
    plt = _pyplot()
    results = accuracy_by_steps(learner, sampler, max_steps, episodes)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.errorbar(
        [s for s, _ in results], [a.mean for _, a in results], yerr=[a.ci95 for _, a in results], fmt="o-"
    )
    axis.axvline(
        learner.steps, color="gray", linestyle=":", label=f"steps while meta-training ({learner.steps})"
    )
    axis.set(xlabel="inner steps at test time", ylabel=f"accuracy ({episodes} episodes)")
    axis.set_xticks(range(1, max_steps + 1))
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_run(
    model: str | Path,
    device: torch.device | str = "cpu",
    out: Path | None = None,
    split: str = "test",
    max_steps: int = 10,
    episodes: int = 100,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write curves.png, episode.png and, for the MAML family, steps.png of a run folder or bundled
    model into `out` (default: RUN/plots, or ./plots for a bundled model); returns the files."""
    if max_steps < 1 or episodes < 1:
        raise FewsightError("--max-steps and --episodes must be at least 1")
    run = resolve_run(model)
    out = out or (Path("plots") if run.parent == BUNDLED else run / "plots")
    if out.exists() and not out.is_dir():
        raise FewsightError(f"--out {out} is a file; plot writes PNG files into a folder: name one")
    make_folder(out, "--out")
    config, learner = load_model(run, device)
    data = load_split(config, split, data_root, progress)
    sampler = EpisodeSampler(data, config.ways, config.shots, config.queries, device)
    written = [plot_curves(run, out / "curves.png"), plot_episode(learner, sampler, out / "episode.png")]
    if isinstance(learner, MAML):
        written.append(plot_adaptation_steps(learner, sampler, out / "steps.png", max_steps, episodes))
    return written
