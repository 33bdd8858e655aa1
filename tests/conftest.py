"""Shared fixtures: the real data sets from ../shared/data, decoded once per test session."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def data_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point fewsight at ../shared/data and a cache folder of the session's own."""
    os.environ["FEWSIGHT_DATA"] = str(SHARED_DATA)
    os.environ.setdefault("FEWSIGHT_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def omniglot_train():
    """The training split of the maml protocol (4,400 classes of 20 images)."""
    if not (SHARED_DATA / "omniglot").is_dir():
        pytest.skip("../shared/data/omniglot is not here")
    from fewsight.data import load_omniglot

    return load_omniglot("train")


@pytest.fixture(scope="session")
def mini_test_photos() -> dict[str, list[Path]]:
    """The miniImageNet sample's test photos (classes unseen in training), by class, sorted."""
    sample = SHARED_DATA / "miniimagenet-sample"
    if not sample.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    by_class: dict[str, list[Path]] = {}
    for line in (sample / "test.csv").read_text().splitlines()[1:]:
        file, label = line.split(",")
        by_class.setdefault(label, []).append(sample / "images" / file)
    return {label: sorted(paths) for label, paths in sorted(by_class.items())}


@pytest.fixture(scope="session")
def drawings(tmp_path_factory) -> Path:
    """Angelic characters 1-20 of the evaluation alphabets (unseen by the bundled model), as PNGs."""
    archive = SHARED_DATA / "omniglot" / "images_evaluation.zip"
    if not archive.is_file():
        pytest.skip("../shared/data/omniglot is not here")
    folder = tmp_path_factory.mktemp("drawings")
    with zipfile.ZipFile(archive) as source:
        for name in source.namelist():
            if name.startswith("images_evaluation/Angelic/") and name.endswith(".png"):
                character, file = name.split("/")[-2:]
                (folder / character).mkdir(exist_ok=True)
                (folder / character / file).write_bytes(source.read(name))
    return folder


@pytest.fixture(scope="session")
def maml_run(tmp_path_factory) -> Path:
    """A tiny 3-way MAML run on Omniglot (see `train_tiny`), shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("maml") / "run"
    train_tiny(run, "--ways", "3")
    return run


def make_task(
    drawings: Path, root: Path, classes: int, shots: int = 1, queries: int = 3
) -> tuple[Path, Path]:
    """support/<class>/ with `shots` drawings each, and query/ with the next `queries` of each."""
    support, query = root / "support", root / "query"
    query.mkdir(parents=True)
    for character in sorted(drawings.iterdir())[:classes]:
        files = sorted(character.iterdir())
        (support / character.name).mkdir(parents=True)
        for file in files[:shots]:
            (support / character.name / file.name).write_bytes(file.read_bytes())
        for file in files[shots : shots + queries]:
            (query / f"{character.name}-{file.name}").write_bytes(file.read_bytes())
    return support, query


def assert_meta_training_lowers_the_loss(learner, sampler, steps: int = 8) -> None:
    """A few Adam steps on one fixed meta-batch must cut its meta-loss by 30% or more."""
    batch = sampler.sample(4, sampler.generator(1))
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def same(a, b) -> bool:
    """Whether two checkpoint values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def metrics(run: Path) -> list[dict]:
    """A run's metrics rows without tasks_per_s, the one value that depends on the machine's speed."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tasks_per_s"} for row in rows]


def train_tiny(run: Path, *extra: str) -> None:
    """A tiny MAML run on Omniglot, on the CPU: 2 steps of 1 task with 1 query per class."""
    from fewsight.cli import main

    flags = ["--steps", "2", "--meta-batch", "1", "--queries", "1", "--log-every", "1", "--quiet"]
    assert main(["train", *flags, "--device", "cpu", *extra, "--out", str(run)]) == 0


class Rerun:
    """Stands in for a CUDA graph on the CPU: `replay` runs the step again and copies its results into
    the outputs of the recording, as a replay overwrites them."""

    def __init__(self, step: Callable[[], object], outputs: object) -> None:
        self.step, self.outputs = step, outputs

    def replay(self) -> None:
        fresh = self.step()
        for output, value in zip(self.outputs or (), fresh or (), strict=True):
            output.copy_(value)


def capture_eagerly(step: Callable[[], object], warmup: int = 3) -> tuple[Rerun, object]:
    """`graphs.capture` without CUDA: the warm-up runs and the recording run the step for real."""
    for _ in range(warmup):
        step()
    outputs = step()
    return Rerun(step, outputs), outputs
