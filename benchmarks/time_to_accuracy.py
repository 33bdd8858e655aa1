"""Wall time to a validation accuracy, 5-way 1-shot MAML: fewsight against a peer library. Omniglot to
98%, or miniImageNet to the MAML paper's 48.70% (`--dataset miniimagenet`).

Usage on the GPU machine: python benchmarks/time_to_accuracy.py --out tta.json [--dataset miniimagenet]

Both contestants train second-order MAML as in the MAML paper (transductive batch norm, Adam at 1e-3,
15 queries a class; Omniglot: Conv4 of 64 channels, 32 tasks a meta-batch, 1 inner step of 0.4, 3 at
test; miniImageNet: Conv4 of 32 channels on 84x84 images, 4 tasks a meta-batch, 5 inner steps of
0.01, 10 at test) on the `train` split, from the same initial weights and on the same meta-batches.
fewsight runs its vmapped step (replayed as a CUDA graph on a GPU, as `fewsight train --cuda-graphs`);
the peer runs benchmarks/peers.py's per-task loop on a plain-torch twin of the model. Every
--eval-every seconds of training (evaluation is off the training clock) the current weights are
scored by fewsight's evaluator on the same fixed `val` episodes (with the test-time inner steps), the
peer's after copying them back into a fewsight learner; a contestant stops when it reaches --target
or after --limit seconds of training. With --eval-steps N the scoring comes every N meta-steps
instead (and --max-steps stops a contestant), so that two contestants' curves meet at equal steps.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks.peers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import PEERS, peer_trainer
from fewsight.algorithms import MAML
from fewsight.data import EpisodeSampler
from fewsight.data.episodes import TaskBatch
from fewsight.run.build import build_learner, load_split
from fewsight.run.config import RunConfig
from fewsight.training.device import default_device
from fewsight.training.evaluate import evaluate
from fewsight.training.graphs import GraphedTrainingStep
from fewsight.training.metatrain import VALIDATION_SEED

Step = Callable[[TaskBatch], None]


@dataclass
class Contestant:
    """A meta-training step, and the fewsight learner that holds the current weights for scoring."""

    name: str
    step: Step
    scored: Callable[[], MAML]


@dataclass(frozen=True)
class Race:
    """When to score the weights and when to stop."""

    target: float
    limit: float
    eval_every: float
    val_episodes: int
    eval_steps: int = 0  # score every this many meta-steps instead of every eval_every seconds
    max_steps: int = 0  # stop after this many meta-steps (0: no limit)


PAPER = {  # the MAML paper's 5-way 1-shot settings and accuracy, per data set
    "omniglot": {"image_size": 28, "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3},
    "miniimagenet": {"image_size": 84, "inner_lr": 0.01, "inner_steps": 5, "eval_inner_steps": 10},
}
DEFAULT_TARGET = {"omniglot": 0.98, "miniimagenet": 0.487}
DEFAULT_META_BATCH = {"omniglot": 32, "miniimagenet": 4}


def maml_config(
    meta_batch: int,
    seed: int,
    cuda_graphs: bool,
    dataset: str = "omniglot",
    queries: int = 15,
    meta_lr: float = 1e-3,
) -> RunConfig:
    """The MAML paper's 5-way 1-shot setting of a data set (its meta learning rate 1e-3 unless
    `meta_lr` says otherwise), pinned here rather than taken from defaults."""
    return RunConfig(
        dataset=dataset,
        protocol="maml",
        algorithm="maml",
        ways=5,
        shots=1,
        queries=queries,
        meta_batch=meta_batch,
        meta_lr=meta_lr,
        transductive=True,
        seed=seed,
        cuda_graphs=cuda_graphs,
        **PAPER[dataset],
    )


def initial_learner(config: RunConfig, device: torch.device) -> MAML:
    """A fresh learner, seeded so that every contestant starts from the same weights."""
    torch.manual_seed(config.seed)
    return build_learner(config).to(device)


def fewsight_contestant(config: RunConfig, device: torch.device) -> Contestant:
    """fewsight's step as `fewsight train` takes it: Adam on `meta_loss`, graphed if config says so."""
    learner = initial_learner(config, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr, capturable=config.cuda_graphs)
    graphed: GraphedTrainingStep | None = None

    def step(batch: TaskBatch) -> None:
        nonlocal graphed
        if config.cuda_graphs:
            if graphed is None:
                graphed = GraphedTrainingStep(learner, optimizer, batch)
            graphed(batch)
            return
        optimizer.zero_grad(set_to_none=True)
        learner.meta_loss(batch).loss.backward()
        optimizer.step()

    name = "fewsight (CUDA graphs)" if config.cuda_graphs else "fewsight"
    return Contestant(name, step, lambda: learner)


def peer_contestant(peer: str, config: RunConfig, device: torch.device) -> Contestant:
    """The peer's per-task step on its twin model, with Adam over the twin's parameters."""
    learner = initial_learner(config, device)
    twin, backward = peer_trainer(peer, learner)
    optimizer = torch.optim.Adam(twin.parameters(), lr=config.meta_lr)

    def step(batch: TaskBatch) -> None:
        optimizer.zero_grad(set_to_none=True)
        backward(batch)
        optimizer.step()

    def scored() -> MAML:
        learner.model.load_state_dict(twin.state_dict())
        return learner

    return Contestant(peer, step, scored)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock holds it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_race(
    contestant: Contestant,
    race: Race,
    train: EpisodeSampler,
    validation: EpisodeSampler,
    config: RunConfig,
) -> Iterator[dict]:
    """Train `contestant`, yielding a row per scoring (the first before any step) until it stops.

    The training clock runs from the first step to each scoring and stops while scoring; the device
    is synchronised only there. A row's `train_seconds` is thus training wall time, first-step
    set-up (CUDA graph capture, cuDNN's kernel search) included.
    """
    generator = train.generator(config.seed)
    trained, steps, first_step = 0.0, 0, None
    while True:
        start = time.perf_counter()
        learner = contestant.scored()
        accuracy = evaluate(learner, validation, race.val_episodes, config.meta_batch, seed=VALIDATION_SEED)
        yield {
            "train_seconds": trained,
            "steps": steps,
            "val_accuracy": accuracy.mean,
            "val_ci95": accuracy.ci95,
            "eval_seconds": time.perf_counter() - start,
            "first_step_seconds": first_step,
        }
        if accuracy.mean >= race.target or trained >= race.limit or steps == (race.max_steps or None):
            return
        scoring_at = min(race.limit, (trained // race.eval_every + 1) * race.eval_every)
        stop_at = race.max_steps or None  # the step count of the next scoring, where steps set it
        if race.eval_steps:
            scoring_at = race.limit
            next_multiple = (steps // race.eval_steps + 1) * race.eval_steps
            stop_at = min(next_multiple, race.max_steps or next_multiple)
        start = time.perf_counter()
        while trained + time.perf_counter() - start < scoring_at and steps != stop_at:
            contestant.step(train.sample(config.meta_batch, generator))
            steps += 1
            if steps == 1:  # the set-up's share of the clock (graph recording, cuDNN's search)
                synchronize(train.device)
                first_step = time.perf_counter() - start
        synchronize(train.device)
        trained += time.perf_counter() - start


def summary(rows: list[dict], target: float) -> dict:
    """Time and steps to the target (None if not reached), best accuracy, meta-steps per second, and
    the first step's seconds (its set-up included)."""
    reached = next((row for row in rows if row["val_accuracy"] >= target), None)
    last = rows[-1]
    return {
        "time_to_target": None if reached is None else reached["train_seconds"],
        "steps_to_target": None if reached is None else reached["steps"],
        "best_val_accuracy": max(row["val_accuracy"] for row in rows),
        "train_seconds": last["train_seconds"],
        "steps": last["steps"],
        "steps_per_s": last["steps"] / last["train_seconds"] if last["train_seconds"] else None,
        "first_step_seconds": last["first_step_seconds"],
    }


def version(package: str) -> str:
    """A package's name and installed version ("fewsight unknown" for a tree run in place)."""
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def extrapolations(contestants: dict[str, dict]) -> dict[str, dict]:
    """For each contestant that missed the target on a device where a fewsight contestant reached it:
    fewsight's steps to target x its own seconds per step (same math, same accuracy per step in
    expectation). An estimate, not a measurement."""
    estimates = {}
    for name, entry in contestants.items():
        if entry["time_to_target"] is not None or not entry["steps_per_s"]:
            continue
        for reference, done in contestants.items():
            same_device = done["device"] == entry["device"]
            if reference.startswith("fewsight") and done["steps_to_target"] and same_device:
                seconds = done["steps_to_target"] / entry["steps_per_s"]
                estimates[name] = {"seconds": seconds, "steps": done["steps_to_target"], "from": reference}
                break
    return estimates


def table(results: dict) -> str:
    """The Markdown table of the results, with the extrapolated times below it."""
    target = results["settings"]["target"]
    lines = [
        f"| contestant | device | meta-steps/s | first step | time to {target:.0%} validation accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, entry in results["contestants"].items():
        if entry["time_to_target"] is not None:
            reached = f"{entry['time_to_target']:.0f} s ({entry['steps_to_target']:,} steps)"
        else:
            reached = f"not reached in {entry['train_seconds']:.0f} s (best {entry['best_val_accuracy']:.1%})"
        speed = f"{entry['steps_per_s']:.2f}" if entry["steps_per_s"] else "—"
        first = entry.get("first_step_seconds")  # absent from files written before it was kept
        first = "—" if first is None else f"{first:.1f} s"
        lines.append(f"| {name} | {entry['device']} | {speed} | {first} | {reached} |")
    for name, estimate in results["extrapolated"].items():
        lines.append(
            f"\n*Extrapolated, not measured*: {name} would need about {estimate['seconds']:,.0f} s "
            f"({estimate['from']}'s {estimate['steps']:,} steps to target x {name}'s "
            f"{1 / results['contestants'][name]['steps_per_s']:.3f} s per step)."
        )
    return "\n".join(lines)


def previous_results(out: Path, settings: dict) -> dict:
    """The contestants already in `out` from a run with the same settings (so that contestants can run
    in separate, time-limited calls), or none."""
    if not out.is_file():
        return {}
    saved = json.loads(out.read_text())
    if saved.get("settings") != settings:
        sys.exit(f"{out} holds a race with other settings; choose another --out or delete it")
    return saved["contestants"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The JSON file gets a row per scoring for each contestant and is rewritten after every "
        "row; contestants already in it from a run with the same settings are kept, so that "
        "`--contestants fewsight` and `--contestants peer` may run as two calls into one file.",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the results")
    parser.add_argument("--dataset", choices=sorted(PAPER), default="omniglot", help="(omniglot)")
    parser.add_argument("--data-root", help="the data set's folder (default: the usual data roots)")
    parser.add_argument(
        "--target", type=float, help="validation accuracy to reach (0.98 Omniglot, 0.487 miniImageNet)"
    )
    parser.add_argument("--limit", type=float, default=600, help="seconds of training per contestant (600)")
    parser.add_argument(
        "--eval-every", type=float, default=20, help="seconds of training between two scorings (20)"
    )
    parser.add_argument(
        "--eval-steps",
        type=int,
        default=0,
        help="score every this many meta-steps instead of every --eval-every seconds, so that the "
        "contestants' curves meet at equal steps (0: by seconds)",
    )
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many meta-steps (0: none)")
    parser.add_argument("--val-episodes", type=int, default=200, help="fixed validation episodes (200)")
    parser.add_argument("--meta-batch", type=int, help="tasks per meta-step (32 Omniglot, 4 miniImageNet)")
    parser.add_argument("--queries", type=int, default=15, help="query images per class (15)")
    parser.add_argument(
        "--meta-lr", type=float, default=1e-3, help="Adam's meta learning rate (1e-3, the paper's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="initial weights and training episodes (0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--contestants",
        default="fewsight,peer",
        help="comma-separated, in order: fewsight and/or peer (the library of --peer) (fewsight,peer)",
    )
    parser.add_argument("--peer", choices=PEERS, default="learn2learn", help="the peer library (learn2learn)")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay fewsight's step as a CUDA graph (default: on a GPU; the peers never are)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let cuDNN search for the fastest kernels of each new shape, as `fewsight train` does "
        "(on; its search is part of the first step's time)",
    )
    args = parser.parse_args(argv)
    args.target = DEFAULT_TARGET[args.dataset] if args.target is None else args.target
    args.meta_batch = args.meta_batch or DEFAULT_META_BATCH[args.dataset]
    args.contestants = args.contestants.split(",")
    if not args.contestants or set(args.contestants) - {"fewsight", "peer"}:
        parser.error("--contestants takes fewsight, peer or both, comma-separated")
    if not 0 <= args.target <= 1 or args.limit <= 0 or args.eval_every <= 0:
        parser.error("--target must be in [0, 1], --limit and --eval-every positive")
    if args.eval_steps < 0 or args.max_steps < 0:
        parser.error("--eval-steps and --max-steps must be 0 or positive")
    if args.meta_lr <= 0:
        parser.error("--meta-lr must be positive")
    args.device = torch.device(args.device) if args.device else default_device()
    if args.cuda_graphs is None:
        args.cuda_graphs = args.device.type == "cuda"
    if args.cuda_graphs and args.device.type != "cuda":
        parser.error("--cuda-graphs needs a CUDA device")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    race = Race(args.target, args.limit, args.eval_every, args.val_episodes, args.eval_steps, args.max_steps)
    config = maml_config(
        args.meta_batch, args.seed, args.cuda_graphs, args.dataset, args.queries, args.meta_lr
    )
    task = f"{args.dataset} 5-way 1-shot, second-order MAML"
    task += "" if args.queries == 15 else f", {args.queries} queries a class"
    task += "" if args.meta_lr == 1e-3 else f", meta learning rate {args.meta_lr:g}"
    settings = {"task": task, **asdict(race)}
    settings |= {"meta_batch": args.meta_batch, "seed": args.seed}
    settings |= {} if args.cudnn_benchmark else {"cudnn_benchmark": False}
    results = {"settings": settings, "contestants": previous_results(args.out, settings), "extrapolated": {}}
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark  # on as `fewsight train`: fixed shapes
    train, validation = (
        EpisodeSampler(
            load_split(config, split, args.data_root), config.ways, config.shots, config.queries, args.device
        )
        for split in ("train", "val")
    )
    for kind in args.contestants:
        if kind == "fewsight":
            contestant = fewsight_contestant(config, args.device)
        else:
            contestant = peer_contestant(args.peer, config, args.device)
        entry = {
            "library": version("fewsight" if kind == "fewsight" else args.peer),
            "device": device_name(args.device),
            "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": [],
        }
        results["contestants"][contestant.name] = entry
        for row in run_race(contestant, race, train, validation, config):
            entry["rows"].append(row)
            entry |= summary(entry["rows"], race.target)
            results["extrapolated"] = extrapolations(results["contestants"])
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(
                f"{contestant.name}: {row['train_seconds']:.1f} s, {row['steps']} steps, validation "
                f"{row['val_accuracy']:.2%} ± {row['val_ci95']:.2%} (scored in {row['eval_seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(table(results))


if __name__ == "__main__":
    main()
