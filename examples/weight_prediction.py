"""A model-based learner written by hand: a network reads a task's support set and predicts the
weights of the classifier head in one forward pass (no inner gradient steps), trained with
fewsight's episodes and evaluator. Usage: python examples/weight_prediction.py [STEPS]"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import fewsight


class WeightPredictor(fewsight.MetaLearner):
    """Class weights = g(mean support embedding of the class); logits = scaled cosine similarity."""

    def __init__(self, ways: int) -> None:
        super().__init__()
        self.ways = ways
        self.embed = fewsight.Conv4(ways=1)  # only its features are used: (B, 64)
        self.predict = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
        self.scale = nn.Parameter(torch.tensor(10.0))

    def _head(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """Predicted head weights (T, N, 64) from support (T, S, C, H, W) and labels (T, S)."""
        features = self.embed.features(support_x.flatten(0, 1)).unflatten(0, support_x.shape[:2])
        one_hot = F.one_hot(support_y, self.ways).to(features.dtype)  # (T, S, N)
        means = one_hot.transpose(1, 2) @ features / one_hot.sum(1).unsqueeze(-1)
        return F.normalize(means + self.predict(means), dim=-1)

    def _logits(self, head: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        features = self.embed.features(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return self.scale * F.normalize(features, dim=-1) @ head.transpose(1, 2)

    def query_logits(self, batch: fewsight.TaskBatch) -> torch.Tensor:
        return self._logits(self._head(batch.support_x, batch.support_y), batch.query_x)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> nn.Module:
        head = self._head(support_x[None], support_y[None])
        return _Classifier(lambda x: self._logits(head, x[None])[0])


class _Classifier(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def main(steps: int = 2000, device: str = "cpu", test_episodes: int = 1000) -> WeightPredictor:
    torch.manual_seed(0)
    learner = WeightPredictor(ways=5).to(device)
    sampler = fewsight.EpisodeSampler(fewsight.load_omniglot("train"), 5, 1, 15, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = sampler.generator(seed=0)
    for step in range(1, steps + 1):
        result = learner.meta_loss(sampler.sample(32, generator))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"step {step}: loss {result.loss.item():.3f}, accuracy {result.accuracy.item():.3f}")
    test = fewsight.EpisodeSampler(fewsight.load_omniglot("test"), 5, 1, 15, device)
    print("test:", fewsight.evaluate(learner, test, episodes=test_episodes))
    return learner


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, "cuda" if torch.cuda.is_available() else "cpu")
