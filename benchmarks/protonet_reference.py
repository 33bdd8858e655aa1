"""ProtoNet on miniImageNet: fewsight's recipe against a reference implementation's, one factor at a time.

The reference (a widely used plain PyTorch re-implementation of Snell et al.'s prototypical networks,
run unchanged beside this script on the same images) differs from fewsight's ProtoNet in two places
of its model: it draws every batch-norm scale uniformly from (0, 1) (PyTorch's old default; fewsight
starts them at 1) and it normalises the input images with ImageNet's mean and standard deviation
(fewsight feeds [0, 1]). This script trains the four combinations side by side in one process, on the
same episodes (30-way 1-shot or 20-way 5-shot, 15 queries, one task a step, Adam 1e-3 halved every
2,000 steps, as the reference), keeps each variant's best-validated weights (400 fixed 5-way validation
episodes every --validate-every steps) and scores them on the same 5-way test episodes with fixed
(population) batch-norm statistics, as the reference scores with running statistics, and with the
task's own statistics.

    python benchmarks/protonet_reference.py --data-root DIR --shots 1 --steps 20000 --out results.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

import fewsight
from fewsight.nets.init import uniform_scales
from fewsight.nets.inputs import input_norm
from fewsight.nets.population import estimate_population_statistics

VARIANTS = {  # name: (batch-norm scales drawn from U(0, 1), ImageNet input normalisation)
    "fewsight": (False, False),
    "uniform bn scale": (True, False),
    "imagenet normalisation": (False, True),
    "both (the reference's model)": (True, True),
}


def build(uniform_scale: bool, imagenet: bool, seed: int) -> fewsight.ProtoNet:
    torch.manual_seed(seed)
    encoder = fewsight.Conv4(ways=None, in_channels=3, hidden=64, image_size=84)
    if uniform_scale:
        uniform_scales(encoder)  # what `fewsight train --norm-scale-init uniform` does
    if imagenet:
        encoder.input_norm = input_norm("imagenet")  # what `fewsight train --input-norm imagenet` does
    return fewsight.ProtoNet(encoder)


def clear_population(learner: nn.Module) -> None:
    for module in learner.modules():
        if isinstance(module, fewsight.TaskBatchNorm):
            module.population_mean = module.population_var = None


def score(
    learner: fewsight.ProtoNet,
    sampler: fewsight.EpisodeSampler,
    episodes: int,
    population: torch.Tensor | None,
) -> fewsight.Accuracy:
    """Accuracy on fixed episodes, with population statistics from `population` images (or the task's)."""
    if population is not None:
        estimate_population_statistics(learner.encoder, population)
    try:
        return fewsight.evaluate(learner.eval(), sampler, episodes=episodes, batch=10, seed=1)
    finally:
        clear_population(learner)
        learner.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--train-ways", type=int, default=None, help="default: 30 at 1 shot, 20 at 5")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--halve-every", type=int, default=2000)
    parser.add_argument("--validate-every", type=int, default=1000)
    parser.add_argument("--val-episodes", type=int, default=400)
    parser.add_argument("--test-episodes", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=1e9, help="stop training after this long")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", required=True, help="a JSON-lines file of validations and results")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ways = args.train_ways or (30 if args.shots == 1 else 20)
    splits = {s: fewsight.load_miniimagenet(s, root=args.data_root) for s in ("train", "val", "test")}
    train = fewsight.EpisodeSampler(splits["train"], ways, args.shots, 15, device=device)
    val = fewsight.EpisodeSampler(splits["val"], 5, args.shots, 15, device=device)
    test = fewsight.EpisodeSampler(splits["test"], 5, args.shots, 15, device=device)
    order = torch.randperm(len(splits["train"].images), generator=torch.Generator().manual_seed(0))
    few, many = order[:2000], order[:10000]  # training images for the population statistics
    names = args.variants.split(",")
    learners = {name: build(*VARIANTS[name], seed=0).to(device) for name in names}
    optimizers = {name: torch.optim.Adam(learner.parameters(), lr=1e-3) for name, learner in learners.items()}
    schedules = {
        name: torch.optim.lr_scheduler.StepLR(opt, args.halve_every, 0.5) for name, opt in optimizers.items()
    }
    best = {name: (-1.0, 0, None) for name in names}
    generator = train.generator(0)
    log = open(args.out, "a")  # noqa: SIM115 (kept open for the whole run)

    def record(row: dict) -> None:
        row = {"shots": args.shots, "train_ways": ways, **row}
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

    start = time.perf_counter()
    step = 0
    while step < args.steps and time.perf_counter() - start < 60 * args.minutes:
        step += 1
        batch = train.sample(1, generator)  # the same episode for every variant
        for name, learner in learners.items():
            loss = learner.meta_loss(batch).loss
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            schedules[name].step()
        if step % args.validate_every == 0 or step == args.steps:
            for name, learner in learners.items():
                accuracy = score(learner, val, args.val_episodes, splits["train"].images[few])
                if accuracy.mean > best[name][0]:
                    best[name] = (accuracy.mean, step, copy.deepcopy(learner.state_dict()))
                record(
                    {"variant": name, "step": step, "val": accuracy.mean, "s": time.perf_counter() - start}
                )
    for name, learner in learners.items():
        _, best_step, state = best[name]
        if state is not None:
            learner.load_state_dict(state)
        population = score(learner, test, args.test_episodes, splits["train"].images[many])
        task = score(learner, test, args.test_episodes, None)
        record(
            {
                "variant": name,
                "result": True,
                "steps": step,
                "best_step": best_step,
                "population": [population.mean, population.ci95],
                "task": [task.mean, task.ci95],
                "episodes": population.episodes,
                "train_s": time.perf_counter() - start,
            }
        )


if __name__ == "__main__":
    main()
