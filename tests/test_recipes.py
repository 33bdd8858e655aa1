"""The miniImageNet recipes of benchmarks/miniimagenet_results.sh that take the papers' reference
settings (docs/RESULTS.md, "Ablations"): each runs on the miniImageNet sample, shortened, and its run
records the settings the recipe promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewsight.cli import main
from fewsight.run.config import RunConfig
from tests.conftest import SHARED_DATA

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "miniimagenet_results.sh"
SAMPLE = SHARED_DATA / "miniimagenet-sample"  # 10 photos a class: fewer ways and queries than the papers'
SHORT = "--steps 2 --ways 5 --queries 2 --meta-batch 1 --val-every 2 --val-episodes 2 --checkpoint-every 2"
SHORT += " --image-size 32"  # 84 pixels would make MAML++'s first-step float64 self-check take half a minute

PROMISED = {  # recipe: settings its run must have
    "protonet-ref-1shot": {"norm_scale_init": "uniform", "joint_statistics": True, "lr_halve_every": 2000},
    "maml-ref-5shot": {"inner_lr": 0.05, "meta_grad_clip": 10.0, "shots": 5, "eval_inner_steps": 10},
    "mamlpp-ref-1shot": {
        "width": 1.5,
        "inner_lr": 0.1,
        "inner_steps": 5,
        "eval_inner_steps": 5,
        "first_order_steps": 1,
        "learned_inner_lr": True,
        "per_step_bn": True,
    },
    "metabaseline-5shot": {
        "shots": 5,
        "metric": "cosine",
        "backbone": "resnet12",
        "meta_optimizer": "sgd",
        "meta_lr": 1e-3,
        "weight_decay": 5e-4,
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    folder = tmp_path_factory.mktemp("recipes")
    flags = ["--dataset", "miniimagenet", "--data-root", str(SAMPLE), "--backbone", "resnet12"]
    flags += ["--width", "0.125", "--epochs", "1", "--val-episodes", "2", "--quiet", "--device", "cpu"]
    assert main(["pretrain", *flags, "--out", str(folder / "resnet12-pretrain")]) == 0  # metabaseline's start
    return folder


@pytest.mark.parametrize("recipe", sorted(PROMISED))
def test_a_reference_recipe_runs_on_the_sample_with_its_settings(runs, recipe):
    environment = {
        **os.environ,
        "FEWSIGHT_DATA": str(SAMPLE),
        "PYTHON": sys.executable,
        "EXTRA_FLAGS": SHORT,
        "EPISODES": "2",
        "EVAL_BATCH": "2",
        "EVAL_QUERIES": "2",
        "PRETRAIN_WIDTH": "0.125",
        "CUDA_VISIBLE_DEVICES": "",
    }
    subprocess.run(["bash", str(SCRIPT), str(runs), recipe], env=environment, check=True, timeout=600)
    config = RunConfig.load(runs / recipe)
    assert {name: getattr(config, name) for name in PROMISED[recipe]} == PROMISED[recipe]
    shots = 5 if recipe.endswith("5shot") else 1
    assert (runs / f"{recipe}.done").exists(), (runs / f"{recipe}.log").read_text()
    scored = json.loads((runs / f"{recipe}.eval-{shots}shot.json").read_text())
    assert (scored["episodes"], scored["shots"], scored["step"]) == (2, shots, 2) and 0 <= scored["mean"] <= 1
