"""Shared fixtures: the real data sets from ../shared/data, decoded once per test session."""

from __future__ import annotations

import json
import os
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
