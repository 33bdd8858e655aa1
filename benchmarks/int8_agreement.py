"""How a model stored in 8 bits (benchmarks/bundle_model.py --int8) compares with its float32 run on the
same test episodes: each one's accuracy and the share of queries both predict alike, at 5-way 1-shot
and 5-shot (task statistics), then the time the int8 backbone takes per image on this machine's CPU.

Usage: python benchmarks/int8_agreement.py RUN BUNDLED [--episodes 30]
"""

from __future__ import annotations

import argparse
import time

import torch

from fewsight.data import EpisodeSampler
from fewsight.run.build import load_split
from fewsight.use.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the float32 run folder")
    parser.add_argument("bundled", help="the same weights bundled in 8 bits")
    parser.add_argument("--episodes", type=int, default=30, help="test episodes of each shot count")
    args = parser.parse_args()
    config, full = load_model(args.run)
    _, compact = load_model(args.bundled)
    test = load_split(config, "test", None, progress=False)
    for shots in (1, 5):
        sampler = EpisodeSampler(test, 5, shots, 15)
        generator = sampler.generator(0)
        correct, same, total, start = [0, 0], 0, 0, time.perf_counter()
        for _ in range(args.episodes):
            task = sampler.sample(1, generator)
            with torch.no_grad():
                predictions = [
                    learner.adapt(task.support_x[0], task.support_y[0])(task.query_x[0]).argmax(-1)
                    for learner in (full, compact)
                ]
            for index, predicted in enumerate(predictions):
                correct[index] += int((predicted == task.query_y[0]).sum())
            same += int((predictions[0] == predictions[1]).sum())
            total += len(predictions[0])
        seconds = time.perf_counter() - start
        print(
            f"5-way {shots}-shot, {args.episodes} episodes: float32 {correct[0] / total:.4f}, "
            f"int8 {correct[1] / total:.4f}, same prediction {same / total:.4f}, {seconds:.0f} s"
        )
    images = test.images[:64].float() / 255
    with torch.no_grad():
        compact.encoder(images[:8])  # warm-up
        start = time.perf_counter()
        compact.encoder(images)
    seconds = time.perf_counter() - start
    print(f"features of 64 images: {seconds:.2f} s, {1000 * seconds / 64:.0f} ms an image")


if __name__ == "__main__":
    main()
