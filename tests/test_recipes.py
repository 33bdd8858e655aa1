"""The miniImageNet recipes of benchmarks/miniimagenet_results.sh that take the papers' reference
settings (docs/RESULTS.md, "Ablations"): each runs on the miniImageNet sample, shortened, and its run
records the settings the recipe promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewsight.cli import main
from fewsight.run.config import RunConfig
from tests.conftest import SHARED_DATA

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "miniimagenet_results.sh"
SAMPLE = SHARED_DATA / "miniimagenet-sample"  # 10 photos a class: fewer ways and queries than the papers'
SHORT = "--steps 2 --ways 5 --queries 2 --meta-batch 1 --val-every 2 --val-episodes 2 --checkpoint-every 2"
SHORT += " --image-size 32"  # 84 pixels would make MAML++'s first-step float64 self-check take half a minute

OVERRIDES = {  # recipe: environment it needs beyond SHORT
    "metabaseline-ref-1shot": {"EXTRA_FLAGS": SHORT.replace("--meta-batch 1", "--meta-batch 2")},
}
PROMISED = {  # recipe: settings its run must have
    "protonet-ref-1shot": {
        "norm_scale_init": "uniform",
        "joint_statistics": True,
        "lr_halve_every": 2000,
        "best_by": "loss",  # Snell et al.'s code stops early on validation loss
    },
    "maml-ref-5shot": {
        "inner_lr": 0.05,
        "meta_grad_clip": 10.0,
        "shots": 5,
        "eval_inner_steps": 10,
        "weight_init": "xavier",
        "norm_scale_init": "fixed",
        "adapt_norm": False,
    },
    "metasgd-ref-5shot": {"algorithm": "metasgd", "inner_steps": 1, "eval_inner_steps": 1, "shots": 5},
    "mamlpp-ref-1shot": {
        "width": 1.5,
        "inner_lr": 0.1,
        "inner_steps": 5,
        "eval_inner_steps": 5,
        "first_order_steps": 1,
        "learned_inner_lr": True,
        "per_step_bn": True,
        "keep_best": 5,  # its code scores an ensemble of its 5 best-validated models
        "weight_init": "xavier",
        "meta_grad_clip": 10.0,
        "multi_step_loss": 7500,  # 15 of its 100 epochs of 500 steps
        "cosine_floor": 1.0,  # min_learning_rate = meta_learning_rate: a constant rate
    },
    "reptile-ref-1shot": {
        "inner_optimizer": "adam",
        "inner_lr": 0.001,
        "inner_batch": 10,
        "inner_steps": 8,
        "eval_inner_steps": 50,
        "meta_batch": 1,  # SHORT's; the recipe's 5
        "meta_optimizer": "sgd",
        "meta_momentum": 0.0,  # a plain step of 1 towards the adapted weights, falling linearly to 0
        "meta_lr": 1.0,
        "linear_lr": True,
    },
    "metabaseline-ref-1shot": {
        "backbone": "resnet12-512",
        "input_norm": "imagenet",
        "metric": "cosine",
        "meta_optimizer": "sgd",
        "meta_batch": 2,  # OVERRIDES'; the recipe's 4
        "step_statistics": True,
        "step_statistics_tasks": 2,  # its code's 2 GPUs
        "steps": 2,
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


ENVIRONMENT = {
    "PYTHON": sys.executable,
    "EXTRA_FLAGS": SHORT,
    "EPISODES": "2",
    "EVAL_BATCH": "2",
    "EVAL_QUERIES": "2",
    "PRETRAIN_WIDTH": "0.125",
    "PRETRAIN_EPOCHS": "1",
    "PRETRAIN_FLAGS": "--image-size 32 --val-episodes 2",
    "CUDA_VISIBLE_DEVICES": "",
}


def run_recipe(runs: Path, recipe: str, **overrides: str) -> None:
    environment = {**os.environ, **ENVIRONMENT, "FEWSIGHT_DATA": str(SAMPLE), **overrides}
    subprocess.run(["bash", str(SCRIPT), str(runs), recipe], env=environment, check=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The pre-training runs the Meta-Baseline recipes start from (the sample, 1 epoch, width 0.125)."""
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    folder = tmp_path_factory.mktemp("recipes")
    flags = ["--dataset", "miniimagenet", "--data-root", str(SAMPLE), "--backbone", "resnet12"]
    flags += ["--width", "0.125", "--epochs", "1", "--val-episodes", "2", "--quiet", "--device", "cpu"]
    assert main(["pretrain", *flags, "--out", str(folder / "resnet12-pretrain")]) == 0  # metabaseline's start
    run_recipe(folder, "classifier-ref")  # metabaseline-ref's start
    return folder


def test_the_classifier_baseline_recipe_has_meta_baselines_settings(runs):
    saved = json.loads((runs / "classifier-ref" / "config.json").read_text())
    expected = {"backbone": "resnet12-512", "input_norm": "imagenet", "drop_rate": 0.0}
    expected |= {"lr": 0.1, "lr_drop_epoch": 90, "batch_size": 128, "bn_batch": 32}
    expected |= {"augment": True, "crop_from": 84, "jitter": False}
    assert {name: saved["pretrain"][name] for name in expected} == expected
    assert (runs / "classifier-ref.done").exists(), (runs / "classifier-ref.log").read_text()
    assert json.loads((runs / "classifier-ref.eval-5shot-population.json").read_text())["shots"] == 5


@pytest.mark.parametrize("recipe", sorted(PROMISED))
def test_a_reference_recipe_runs_on_the_sample_with_its_settings(runs, recipe):
    run_recipe(runs, recipe, **OVERRIDES.get(recipe, {}))
    config = RunConfig.load(runs / recipe)
    assert {name: getattr(config, name) for name in PROMISED[recipe]} == PROMISED[recipe]
    shots = 5 if recipe.endswith("5shot") else 1
    assert (runs / f"{recipe}.done").exists(), (runs / f"{recipe}.log").read_text()
    weights = "-ensemble" if recipe.startswith("mamlpp-ref") else ""  # its code scores its best 5 as one
    scored = json.loads((runs / f"{recipe}.eval-{shots}shot{weights}.json").read_text())
    steps = [2] if weights else 2  # an ensemble records the steps of its members
    assert (scored["episodes"], scored["shots"], scored["step"]) == (2, shots, steps)
    assert 0 <= scored["mean"] <= 1
    if recipe.startswith(("maml", "reptile")):  # also as their papers score: K (Reptile: 1) queries a class
        queries = 1 if recipe.startswith("reptile") else shots
        paper = json.loads((runs / f"{recipe}.eval-{shots}shot-{queries}q{weights}.json").read_text())
        assert (paper["queries"], paper["shots"], paper["episodes"]) == (queries, shots, 2)


def test_snells_final_model_trains_on_train_and_val_for_the_best_validated_steps(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    longer = SHORT.replace("--steps 2", "--steps 4")
    run_recipe(tmp_path, "protonet-ref-1shot", EXTRA_FLAGS=longer)
    best = torch.load(tmp_path / "protonet-ref-1shot" / "best.pt", weights_only=True)["step"]
    run_recipe(tmp_path, "protonet-ref-trainval-1shot", EXTRA_FLAGS=SHORT.replace("--steps 2", ""))
    config = RunConfig.load(tmp_path / "protonet-ref-trainval-1shot")
    assert config.trainval and config.steps == best and config.joint_statistics
    assert (tmp_path / "protonet-ref-trainval-1shot.eval-1shot.json").exists()
    missing = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "none"), "protonet-ref-trainval-5shot"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "run recipe protonet-ref-5shot first" in missing.stderr
    given = tmp_path / "given"  # no protonet-ref run there: the step count is given
    unbounded = SHORT.replace("--steps 2", "")
    run_recipe(
        given, "protonet-ref-trainval-5shot", EXTRA_FLAGS=unbounded, TRAINVAL_STEPS="3", WEIGHTS="best"
    )
    assert RunConfig.load(given / "protonet-ref-trainval-5shot").steps == 3
    scored = json.loads((given / "protonet-ref-trainval-5shot.eval-5shot.json").read_text())
    assert scored["step"] == 3  # WEIGHTS=best: no validation classes are left, so its last weights


def test_a_run_whose_extra_flags_override_its_recipe_resumes_with_its_own_settings(tmp_path):
    """EXTRA_FLAGS here override the recipe's --meta-batch 4 and --image-size 84; a second call resumes
    the run from its config.json instead of giving the recipe's flags again (which --resume refuses)."""
    if not SAMPLE.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    for _ in range(2):
        run_recipe(tmp_path, "maml-1shot")
    log = (tmp_path / "maml-1shot.log").read_text()
    assert "error" not in log and log.count("trained: ") == 2, log
    config = RunConfig.load(tmp_path / "maml-1shot")
    assert (config.meta_batch, config.image_size, config.inner_lr) == (1, 32, 0.01)
