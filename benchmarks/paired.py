"""The difference between two models scored on the same fixed episodes, with its 95% interval
computed pair by pair (each episode's accuracy under A minus under B): tighter than the two
scores' own intervals, as an episode that is hard for one model tends to be hard for the other.
For the ablations of docs/RESULTS.md: python benchmarks/paired.py A.json B.json, each written by
`fewsight eval RUN --json` (its "per_episode" scores) with the same split, seed, ways, shots,
queries and episode count.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SAME = ("split", "seed", "ways", "shots", "queries", "episodes")


def paired_difference(first: dict, second: dict) -> tuple[float, float]:
    """Mean of first − second over their common episodes, and its 95% half-width (normal)."""
    differ = [key for key in SAME if first.get(key) != second.get(key)]
    if differ:
        raise ValueError(f"not scored on the same episodes: {', '.join(differ)} differ")
    a, b = first.get("per_episode"), second.get("per_episode")
    if not a or not b or len(a) != len(b):
        raise ValueError("both files need the per-episode scores of fewsight eval --json")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(differences) / len(differences)
    if len(differences) < 2:
        return mean, math.nan
    variance = sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)
    return mean, 1.96 * math.sqrt(variance / len(differences))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="fewsight eval --json output of model A")
    parser.add_argument("second", help="the same of model B, on the same episodes")
    args = parser.parse_args()
    try:
        records = [json.loads(Path(path).read_text()) for path in (args.first, args.second)]
        mean, half = paired_difference(*records)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        print(f"paired.py: {error}", file=sys.stderr)
        return 2
    scores = " vs ".join(f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}%" for r in records)
    episodes = records[0]["episodes"]
    print(f"A − B = {100 * mean:+.2f} ± {100 * half:.2f} points, paired over {episodes} episodes ({scores})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
