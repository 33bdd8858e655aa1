"""Meta-learn your own nn.Module: MAML and ANIL around a small residual network with dropout and an
extra buffer, on 20-way Omniglot tasks. Usage: python examples/own_module.py [STEPS]

It prints the test accuracy before and after meta-training (chance is 5% at 20 ways) and the mean
meta-loss of the first and the last tenth of the steps, so that a short run shows whether it is
learning even while its accuracy is still at chance."""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import fewsight


class ResidualNet(nn.Module):
    """A user's network: no batch norm, a residual block, dropout and a non-trainable buffer."""

    def __init__(self, ways: int) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(0.08))
        self.stem = nn.Conv2d(1, 32, 3, stride=2, padding=1)  # 28 -> 14
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
        )
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(32, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x - self.pixel_mean))
        x = F.relu(x + self.block(x))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


def main(steps: int = 1000, device: str = "cpu", test_episodes: int = 200) -> dict[str, fewsight.Accuracy]:
    """Meta-train each learner for `steps` steps of 16 tasks and score it on `test_episodes` test tasks."""
    train = fewsight.EpisodeSampler(fewsight.load_omniglot("train"), 20, 1, 5, device)
    test = fewsight.EpisodeSampler(fewsight.load_omniglot("test"), 20, 1, 5, device)
    results = {}
    for algorithm in (fewsight.MAML, fewsight.ANIL):
        torch.manual_seed(0)
        learner = algorithm(ResidualNet(ways=20), inner_lr=0.1, steps=3).to(device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        before = fewsight.evaluate(learner, test, episodes=test_episodes)
        generator = train.generator(seed=0)
        losses = []
        for _ in range(steps):
            result = learner.meta_loss(train.sample(16, generator))
            optimizer.zero_grad()
            result.loss.backward()
            optimizer.step()
            losses.append(result.loss.item())
        results[algorithm.__name__] = fewsight.evaluate(learner, test, episodes=test_episodes)
        tenth = max(1, steps // 10)
        print(
            f"{algorithm.__name__}: {before} before meta-training, {results[algorithm.__name__]} after "
            f"{steps} steps (chance: 5%); meta-loss {sum(losses[:tenth]) / tenth:.3f} over the first "
            f"{tenth} steps, {sum(losses[-tenth:]) / tenth:.3f} over the last {tenth}"
        )
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, "cuda" if torch.cuda.is_available() else "cpu")
