"""What a process group computes against one process, for MAML on Omniglot: the meta-gradient of a
4-task meta-batch against the mean of its two 2-task halves (what two processes average), on either
of MAML's recorded-step paths, eagerly and replayed from a CUDA graph, each against the per-task
loop in float64 and float32; then how far apart 3 Adam steps on each float32 gradient leave the
weights (the share of each tensor outside the torchrun test's tolerance). Written to find where
`test_torchrun_training_with_cuda_graphs_equals_one_process` parts on an H100 (docs/BENCHMARKS.md).

Usage: FEWSIGHT_DATA=DIR python benchmarks/group_step_agreement.py [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from fewsight.data import EpisodeSampler, load_omniglot
from fewsight.data.episodes import TaskBatch
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.training.graphs import capture

Gradients = dict[str, torch.Tensor]


def meta_gradient(learner: torch.nn.Module, batch: TaskBatch, replayed: bool, graphed: bool) -> Gradients:
    """The meta-gradient of `batch` by one path, eagerly or from a recorded graph's one replay."""
    learner.replayed = replayed

    def step() -> tuple:
        learner.zero_grad(set_to_none=False)
        learner.meta_loss(batch).loss.backward()
        return ()

    if graphed:
        graph, _ = capture(step)
        graph.replay()
    else:
        step()
    return {name: p.grad.detach().clone() for name, p in learner.named_parameters()}


def after_adam(gradient: Gradients, steps: int = 3, lr: float = 1e-3) -> Gradients:
    """Weights that start at 0 after `steps` Adam steps on the same gradient."""
    weights = {name: torch.zeros_like(g, requires_grad=True) for name, g in gradient.items()}
    optimizer = torch.optim.Adam(weights.values(), lr=lr)
    for _ in range(steps):
        for name, w in weights.items():
            w.grad = gradient[name].clone()
        optimizer.step()
    return {name: w.detach() for name, w in weights.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds the recorded graphs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False
    print(torch.__version__, torch.cuda.get_device_name() if device.type == "cuda" else "CPU")
    images = load_omniglot("trainval")
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        config = RunConfig(algorithm="maml", meta_batch=4, queries=2, trainval=True)
        learner = build_learner(config).to(device, dtype)
        learner.self_check = False
        for p in learner.parameters():
            p.grad = torch.zeros_like(p)  # gradients keep their addresses, as in a recorded step
        sampler = EpisodeSampler(images, 5, 1, 2, device, dtype=dtype)
        batch = sampler.sample(4, sampler.generator(0))
        halves = (batch.tasks_between(0, 2), batch.tasks_between(2, 4))
        found: dict[str, Gradients] = {}
        for graphed in (False, True) if device.type == "cuda" else (False,):
            for replayed in (True, False):
                name = f"{'graphed' if graphed else 'eager'}, {'replayed' if replayed else 'one-level'} path"
                found[f"{name}, 4 tasks"] = meta_gradient(learner, batch, replayed, graphed)
                first, second = (meta_gradient(learner, half, replayed, graphed) for half in halves)
                found[f"{name}, halves"] = {n: (first[n] + second[n]) / 2 for n in first}
        learner.per_task = True
        reference = meta_gradient(learner, batch, False, False)
        weights = [n for n in reference if not n.endswith("conv.bias")]  # exact gradient 0: noise only
        print(f"\n{dtype}: relative distance to the per-task loop (worst tensor; first layer)")
        for name, gradient in found.items():
            error = {n: float((gradient[n] - reference[n]).norm() / reference[n].norm()) for n in weights}
            worst = max(error, key=error.get)
            print(f"  {name:36s} {error[worst]:.1e} ({worst}); {error[weights[0]]:.1e}")
        if dtype == torch.float32:
            print("after 3 Adam steps: share of each tensor outside rtol 1e-5, atol 1e-6 of the first row's")
            base = after_adam(next(iter(found.values())))
            for name, gradient in found.items():
                moved = after_adam(gradient)
                apart = {
                    n: float((~torch.isclose(moved[n], base[n], rtol=1e-5, atol=1e-6)).float().mean())
                    for n in weights
                }
                print(f"  {name:36s} {max(apart.values()):.4f} ({max(apart, key=apart.get)})")


if __name__ == "__main__":
    main()
