"""The benchmark suite: it checks each implementation's meta-gradient before timing it."""

from __future__ import annotations

import pytest
import torch

from fewsight.cli import main
from fewsight.training import bench

TINY = bench.Case("omniglot", "maml", ways=3, shots=1, meta_batch=2, inner_steps=1, queries=1)


def test_vmap_and_loop_give_the_reference_meta_gradient() -> None:
    for name, implementation in bench.implementations(TINY).items():
        if "bf16" not in name:
            assert bench.gradient_error(TINY, implementation, torch.device("cpu")) < 1e-10, name


@pytest.mark.parametrize(
    ("dataset", "backbone"), [("omniglot", "conv4"), ("miniimagenet", "conv4"), ("miniimagenet", "resnet12")]
)
def test_what_a_gpu_runs_gives_the_reference_meta_gradient(monkeypatch, dataset: str, backbone: str) -> None:
    """What a GPU runs, forced on the CPU: a zero channel beside Omniglot's one-channel images (so
    that cuDNN takes the tasks' first convolution) and the tasks folded channels-last. The float64
    meta-gradient is the per-task reference's, on Conv4 and ResNet-12."""
    from functools import partial

    from fewsight.nets import conv, conv4

    as_on_a_gpu = partial(conv.conv_per_task, widen=True, channels_last=True)
    monkeypatch.setattr(conv, "conv_per_task", as_on_a_gpu)
    monkeypatch.setattr(conv4, "conv_per_task", as_on_a_gpu)
    narrow = (("width", 0.125),) if backbone == "resnet12" else ()  # 8-20-40-80 channels: a fast test
    case = bench.Case(dataset, "maml", 3, 1, 2, inner_steps=2, queries=2, backbone=backbone, options=narrow)
    vmapped = bench.fewsight_implementation(per_task=False)
    assert bench.gradient_error(case, vmapped, torch.device("cpu")) < 1e-10


def test_a_wrong_meta_gradient_is_caught() -> None:
    def first_order(learner, batch):
        learner.first_order = True  # drops the second-order terms: not the reference's meta-gradient
        return bench.fewsight_implementation(per_task=False)(learner, batch)

    assert bench.gradient_error(TINY, first_order, torch.device("cpu")) > 1e-6


def test_rows_time_every_implementation_and_compare_with_the_loop() -> None:
    rows = bench.run_suite([TINY], torch.device("cpu"), repeats=3, max_seconds=0.0)
    assert {row.implementation for row in rows} == {"fewsight vmap", "fewsight vmap bf16", "per-task loop"}
    for row in rows:
        assert row.ms_per_step > 0 and row.first_step_s > 0
        assert abs(row.tasks_per_s - 2 / (row.ms_per_step / 1000)) < 1e-6 * row.tasks_per_s
    table = bench.markdown(rows)
    assert table.count("\n") == 2 + len(rows)
    assert "1.0x" in table  # the loop against itself


def test_the_sampler_draws_episodes() -> None:
    assert bench.sampler_speed(torch.device("cpu"), tasks=4, seconds=0.1) > 0


def test_bench_refuses_too_few_repeats(capsys) -> None:
    assert main(["bench", "--repeats", "2", "--device", "cpu"]) == 2
    assert "--repeats must be at least 3" in capsys.readouterr().err
