"""MAML, Omniglot 5-way 1-shot: the same weights as `fewsight train --ways 5 --shots 1 --trainval`."""

import sys

import torch
from tqdm import trange

import fewsight


def main(steps: int = 60000, device: str = "cpu", test_episodes: int = 1000) -> fewsight.MAML:
    torch.manual_seed(0)  # the initialisation
    learner = fewsight.MAML(fewsight.Conv4(ways=5), inner_lr=0.4, steps=1, eval_steps=3).to(device)
    sampler = fewsight.EpisodeSampler(fewsight.load_omniglot("trainval"), 5, 1, 15, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = sampler.generator(seed=0)  # the training episodes
    for _ in trange(steps, desc="meta-training"):
        tasks = sampler.sample(32, generator)  # support (32, 5, 1, 28, 28), query (32, 75, 1, 28, 28)
        result = learner.meta_loss(tasks)  # adapts all 32 tasks at once (vmap over tasks)
        optimizer.zero_grad()
        result.loss.backward()  # the second-order meta-gradient
        optimizer.step()
    test = fewsight.EpisodeSampler(fewsight.load_omniglot("test"), 5, 1, 15, device)
    print("test:", fewsight.evaluate(learner, test, episodes=test_episodes))
    return learner


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60000, "cuda" if torch.cuda.is_available() else "cpu")
