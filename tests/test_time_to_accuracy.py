"""benchmarks/time_to_accuracy.py on real Omniglot episodes, on the CPU, with tiny settings.

The peer case runs with higher (pure Python) when it is installed and skips otherwise, as in CI.
"""

import json
import time

import pytest
import torch

from benchmarks.time_to_accuracy import (
    Race,
    extrapolations,
    fewsight_contestant,
    main,
    maml_config,
    peer_contestant,
    run_race,
    summary,
)
from fewsight.data import EpisodeSampler, load_omniglot
from tests.conftest import SHARED_DATA

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def samplers(omniglot_train):
    return EpisodeSampler(omniglot_train, 5, 1, 15), EpisodeSampler(load_omniglot("val"), 5, 1, 15)


def test_race_scores_on_its_training_clock_and_stops_at_the_limit(samplers):
    config = maml_config(meta_batch=1, seed=0, cuda_graphs=False)
    race = Race(target=1.01, limit=1.0, eval_every=0.5, val_episodes=1)  # the target is out of reach
    start = time.perf_counter()
    rows = list(run_race(fewsight_contestant(config, CPU), race, *samplers, config))
    wall = time.perf_counter() - start
    assert rows[0]["steps"] == 0 and rows[0]["train_seconds"] == 0
    steps = [row["steps"] for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] > 0
    assert all(0 <= row["val_accuracy"] <= 1 and row["eval_seconds"] > 0 for row in rows)
    # Each scoring waits for its point on the training clock (0.5 s, 1 s); the limit ends the race.
    clock = [row["train_seconds"] for row in rows]
    assert all(seconds >= min(race.limit, k * race.eval_every) for k, seconds in enumerate(clock))
    assert max(clock[:-1]) < race.limit <= clock[-1]
    # Scoring is off the training clock: the clock and the scorings fit in the race's wall time.
    assert clock[-1] + sum(row["eval_seconds"] for row in rows) <= wall
    done = summary(rows, race.target)
    assert done["time_to_target"] is None and done["steps"] == rows[-1]["steps"]
    assert done["steps_per_s"] == pytest.approx(rows[-1]["steps"] / rows[-1]["train_seconds"])
    # The first step's time (its set-up included) is kept from the first scoring after it on.
    assert rows[0]["first_step_seconds"] is None
    first = rows[1]["first_step_seconds"]
    assert 0 < first <= rows[1]["train_seconds"]
    assert {row["first_step_seconds"] for row in rows[1:]} == {first}
    assert done["first_step_seconds"] == first


def test_race_by_steps_scores_at_multiples_of_its_step_count_and_stops_at_max_steps(samplers):
    config = maml_config(meta_batch=1, seed=0, cuda_graphs=False)
    race = Race(target=1.01, limit=600, eval_every=0.01, val_episodes=1, eval_steps=2, max_steps=5)
    rows = list(run_race(fewsight_contestant(config, CPU), race, *samplers, config))
    assert [row["steps"] for row in rows] == [0, 2, 4, 5]  # the seconds of eval_every play no part


def test_peer_trains_the_same_model_and_is_scored_by_fewsight(samplers):
    pytest.importorskip("higher")
    config = maml_config(meta_batch=1, seed=0, cuda_graphs=False)
    ours, theirs = fewsight_contestant(config, CPU), peer_contestant("higher", config, CPU)
    torch.testing.assert_close(theirs.scored().state_dict(), ours.scored().state_dict())
    train, validation = samplers
    for contestant in (ours, theirs):
        contestant.step(train.sample(1, train.generator(0)))
    # Compared by their adapted logits, not weight by weight: batch norm cancels the convolutions'
    # biases, whose gradients are rounding noise that Adam scales up to a full step of either sign.
    tasks = next(validation.fixed_episodes(1, 1, seed=0))
    with torch.no_grad():
        expected = ours.scored().query_logits(tasks)
        torch.testing.assert_close(theirs.scored().query_logits(tasks), expected, rtol=1e-4, atol=1e-4)


def test_cli_stops_at_the_first_scoring_once_the_target_is_met_and_keeps_earlier_contestants(
    tmp_path, capsys, omniglot_train
):
    out = tmp_path / "tta.json"
    flags = [
        "--out",
        str(out),
        "--target",
        "0",
        "--val-episodes",
        "1",
        "--meta-batch",
        "1",
        "--device",
        "cpu",
    ]
    settings = {"task": "omniglot 5-way 1-shot, second-order MAML", "target": 0.0, "limit": 600.0}
    settings |= {
        "eval_every": 20.0,
        "val_episodes": 1,
        "eval_steps": 0,
        "max_steps": 0,
        "meta_batch": 1,
        "seed": 0,
    }
    earlier = {"time_to_target": 1.0, "steps_to_target": 10, "steps_per_s": 10.0, "device": "H100"}
    out.write_text(json.dumps({"settings": settings, "contestants": {"earlier": earlier}}))
    main([*flags, "--contestants", "fewsight"])
    results = json.loads(out.read_text())
    assert set(results["contestants"]) == {"earlier", "fewsight"}
    entry = results["contestants"]["fewsight"]
    assert [row["steps"] for row in entry["rows"]] == [0] and entry["time_to_target"] == 0
    assert entry["device"].startswith("CPU") and entry["torch"] == torch.__version__
    assert "| fewsight | CPU" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):
        main([*flags, "--contestants", "fewsight", "--seed", "1"])


def test_extrapolation_takes_fewsight_steps_at_the_peer_speed_on_the_same_device_only():
    fewsight = {"time_to_target": 30.0, "steps_to_target": 300, "steps_per_s": 10.0, "device": "H100"}
    peer = {"time_to_target": None, "steps_to_target": None, "steps_per_s": 0.5, "device": "H100"}
    assert extrapolations({"fewsight": fewsight, "learn2learn": peer}) == {
        "learn2learn": {"seconds": 600.0, "steps": 300, "from": "fewsight"}
    }
    assert extrapolations({"fewsight": fewsight, "learn2learn": {**peer, "device": "H200"}}) == {}


def test_miniimagenet_race_uses_the_maml_papers_setting(tmp_path, capsys):
    """--dataset miniimagenet: Conv4 of 32 channels on 84x84 images, 5 inner steps of 0.01 (10 at
    test), 4 tasks a meta-batch, the paper's 48.70% as the default target; on the sample's images."""
    sample = SHARED_DATA / "miniimagenet-sample"
    if not sample.is_dir():
        pytest.skip("../shared/data/miniimagenet-sample is not here")
    config = maml_config(4, 0, False, "miniimagenet")
    assert (config.image_size, config.inner_lr, config.inner_steps, config.eval_inner_steps) == (
        84,
        0.01,
        5,
        10,
    )
    out = tmp_path / "tta.json"
    flags = ["--out", str(out), "--dataset", "miniimagenet", "--data-root", str(sample), "--queries", "4"]
    flags += ["--contestants", "fewsight"]
    main([*flags, "--limit", "0.5", "--eval-every", "0.5", "--val-episodes", "1", "--device", "cpu"])
    results = json.loads(out.read_text())
    assert results["settings"]["task"] == "miniimagenet 5-way 1-shot, second-order MAML, 4 queries a class"
    assert results["settings"]["target"] == 0.487 and results["settings"]["meta_batch"] == 4
    assert results["contestants"]["fewsight"]["rows"][-1]["steps"] >= 1
    assert "time to 49% validation accuracy" in capsys.readouterr().out


def test_setup_time_splits_the_first_step_from_the_later_ones(omniglot_train):
    """benchmarks/setup_time.py on the CPU: a fresh learner's first step carries its float64
    self-check (two more meta-gradients), so it is slower than the later steps' mean."""
    from benchmarks.setup_time import measure

    seconds = measure(maml_config(meta_batch=2, seed=0, cuda_graphs=False), CPU, steps=2)
    assert set(seconds) == {"cold", "warm", "step"} and min(seconds.values()) > 0
    assert seconds["warm"] > seconds["step"]
