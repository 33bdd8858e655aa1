"""Meta-learn your own nn.Module: MAML and ANIL around a small residual network with dropout and an
extra buffer, on 20-way Omniglot tasks. Usage: python examples/own_module.py [STEPS]"""

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
    train = fewsight.EpisodeSampler(fewsight.load_omniglot("train"), 20, 1, 5, device)
    test = fewsight.EpisodeSampler(fewsight.load_omniglot("test"), 20, 1, 5, device)
    results = {}
    for algorithm in (fewsight.MAML, fewsight.ANIL):
        torch.manual_seed(0)
        learner = algorithm(ResidualNet(ways=20), inner_lr=0.1, steps=3).to(device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        generator = train.generator(seed=0)
        for _ in range(steps):
            result = learner.meta_loss(train.sample(16, generator))
            optimizer.zero_grad()
            result.loss.backward()
            optimizer.step()
        results[algorithm.__name__] = fewsight.evaluate(learner, test, episodes=test_episodes)
        print(f"{algorithm.__name__}: {results[algorithm.__name__]}")
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, "cuda" if torch.cuda.is_available() else "cpu")
