"""Per-episode scores in episode order, and the paired difference of two models on the same episodes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.paired import paired_difference
from fewsight.cli import main

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "paired.py"


def scored(run: Path, capsys, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "7", "--json", "--quiet", "--device", "cpu", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_episode_is_scored_in_episode_order_whatever_the_batch(maml_run, capsys):
    by_three, by_five = scored(maml_run, capsys, "--batch", "3"), scored(maml_run, capsys, "--batch", "5")
    assert len(by_three["per_episode"]) == 7
    assert by_three["per_episode"] == by_five["per_episode"]
    assert sum(by_three["per_episode"]) / 7 == pytest.approx(by_three["mean"], abs=1e-6)


def test_the_paired_difference_and_its_interval():
    protocol = {"split": "test", "seed": 0, "ways": 5, "shots": 1, "queries": 1, "episodes": 4}
    first = {**protocol, "per_episode": [1.0, 0.6, 0.4, 0.2]}
    second = {**protocol, "per_episode": [0.8, 0.6, 0.2, 0.2]}
    mean, half = paired_difference(first, second)  # differences 0.2, 0, 0.2, 0: mean 0.1, sd 0.1155
    assert mean == pytest.approx(0.1)
    assert half == pytest.approx(1.96 * (0.04 / 3) ** 0.5 / 2)
    with pytest.raises(ValueError, match="seed differ"):
        paired_difference(first, {**second, "seed": 1})


def test_the_script_compares_two_eval_files(maml_run, capsys, tmp_path):
    same = tmp_path / "a.json"
    same.write_text(json.dumps(scored(maml_run, capsys)))
    other = tmp_path / "b.json"
    other.write_text(json.dumps(scored(maml_run, capsys, "--seed", "1")))
    done = subprocess.run([sys.executable, SCRIPT, same, same], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("A − B = +0.00 ± 0.00 points, paired over 7")
    done = subprocess.run([sys.executable, SCRIPT, same, other], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "paired.py: not scored on the same episodes: seed differ"
