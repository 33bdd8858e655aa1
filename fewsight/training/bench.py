"""Speed benchmarks: median time per meta-step, tasks per second, peak GPU memory and time to the first
step, for each algorithm and implementation, after checking in float64 that each implementation gives
the reference meta-gradient.

The images are random, in the data set's shape: speed does not depend on pixel values, so the suite
runs anywhere without the data sets. One meta-step is the forward and backward pass of one meta-batch
(the meta-optimiser's step, the same for every implementation, is left out).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import torch

from fewsight.algorithms import MetaLearner
from fewsight.data.episodes import EpisodeSampler, TaskBatch
from fewsight.data.images import LabelledImages
from fewsight.run.algorithms import REGISTRY
from fewsight.run.build import build_learner
from fewsight.run.config import CHANNELS, DEFAULT_IMAGE_SIZE, GRADIENT_BASED, RunConfig
from fewsight.training.graphs import capture, static_copy

MetaGradient = Callable[[], dict[str, torch.Tensor]]
Implementation = Callable[[MetaLearner, TaskBatch], MetaGradient]
"""Builds, for a learner and a meta-batch, a call that computes the meta-gradient by parameter name."""


@dataclass(frozen=True)
class Case:
    """One benchmark setting: a data set's image shape, an algorithm and a task shape."""

    dataset: str
    algorithm: str
    ways: int
    shots: int
    meta_batch: int
    inner_steps: int = 5
    queries: int = 15
    backbone: str = "conv4"
    options: tuple[tuple[str, object], ...] = ()  # other RunConfig settings, e.g. (("task_chunk", 8),)

    @property
    def name(self) -> str:
        name = (
            f"{self.dataset} {self.backbone} {self.ways}-way {self.shots}-shot, meta-batch {self.meta_batch}"
        )
        return name + "".join(f", {key.replace('_', '-')} {value}" for key, value in self.options)

    def config(self) -> RunConfig:
        steps = self.inner_steps
        return RunConfig(
            dataset=self.dataset,
            image_size=DEFAULT_IMAGE_SIZE[self.dataset],
            algorithm=self.algorithm,
            ways=self.ways,
            shots=self.shots,
            queries=self.queries,
            meta_batch=self.meta_batch,
            inner_steps=steps,
            eval_inner_steps=steps,
            inner_lr=0.4 if self.dataset == "omniglot" else 0.01,
            backbone=self.backbone,
            **dict(self.options),
        )


def _suite() -> list[Case]:
    """The issue's settings: Omniglot 5- and 20-way, miniImageNet 5-way with Conv4 and ResNet-12, every
    algorithm; and the memory levers (tasks in chunks, checkpointed inner loop)."""
    algorithms = tuple(name for name, algorithm in REGISTRY.items() if algorithm.bench)
    cases = [Case("omniglot", a, 5, 1, 32) for a in algorithms]
    cases += [Case("omniglot", a, 20, 1, 16) for a in ("maml", "protonet")]
    cases += [Case("omniglot", "maml", 5, 1, 32, options=(("task_chunk", c),)) for c in (8, 1)]
    cases += [Case("omniglot", "maml", 5, 1, 32, options=(("checkpoint_inner", True),))]
    cases += [Case("miniimagenet", a, 5, 1, 4) for a in algorithms]
    resnet = ("protonet", "anil", "fomaml", "maml")
    cases += [Case("miniimagenet", a, 5, 1, 4, backbone="resnet12") for a in resnet]
    cases += [
        Case("miniimagenet", "maml", 5, 1, 4, backbone="resnet12", options=(("checkpoint_inner", True),))
    ]
    return cases


SUITE = _suite()


@dataclass
class Row:
    """One measured implementation of one case."""

    case: str
    algorithm: str
    implementation: str
    ms_per_step: float
    tasks_per_s: float
    peak_mib: float | None
    first_step_s: float
    gradient_error: float | None  # largest |difference| from the float64 reference; None: not checked


def fewsight_implementation(per_task: bool, bf16: bool = False) -> Implementation:
    """fewsight's meta-gradient: vmap over tasks (`per_task=False`) or a plain loop over tasks."""

    def make(learner: MetaLearner, batch: TaskBatch) -> MetaGradient:
        if hasattr(learner, "per_task"):
            learner.per_task = per_task
        device = batch.support_x.device.type

        def step() -> dict[str, torch.Tensor]:
            learner.zero_grad(set_to_none=True)
            with torch.autocast(device, torch.bfloat16) if bf16 else nullcontext():
                loss = learner.meta_loss(batch).loss
            loss.backward()
            return {name: p.grad for name, p in learner.named_parameters() if p.grad is not None}

        return step

    return make


def graphed_implementation(replayed: bool = True) -> Implementation:
    """fewsight's vmapped meta-gradient recorded once as a CUDA graph and replayed; `replayed` picks
    the learner's path where it has two (training times both and keeps the faster)."""

    def make(learner: MetaLearner, batch: TaskBatch) -> MetaGradient:
        learner.per_task, learner.replayed = False, replayed
        static = static_copy(batch)

        def step() -> None:
            learner.zero_grad(set_to_none=False)
            learner.meta_loss(static).loss.backward()

        graph, _ = capture(step)
        gradients = {name: p.grad for name, p in learner.named_parameters() if p.grad is not None}

        def replay() -> dict[str, torch.Tensor]:
            graph.replay()
            return gradients

        return replay

    return make


def implementations(case: Case) -> dict[str, Implementation]:
    """fewsight's implementations that apply to a case: a CUDA graph on a GPU (what `fewsight train`
    runs there), the loop over tasks for the MAML family, bf16 for second-order MAML."""
    found = {"fewsight vmap": fewsight_implementation(per_task=False)}
    if torch.cuda.is_available():
        found["fewsight vmap + CUDA graph"] = graphed_implementation()
        if case.algorithm == "maml" and not dict(case.options).get("checkpoint_inner"):
            found["fewsight vmap + CUDA graph, one-level path"] = graphed_implementation(replayed=False)
    if case.options:  # a memory lever: compared with the plain rows of the same setting
        if dict(case.options).get("task_chunk") == 1:  # one task at a time with plain autograd,
            found["per-task loop"] = fewsight_implementation(per_task=True)  # as learn2learn does
        return found
    if case.algorithm == "maml":
        found["fewsight vmap bf16"] = fewsight_implementation(per_task=False, bf16=True)
    if case.algorithm in GRADIENT_BASED:
        found["per-task loop"] = fewsight_implementation(per_task=True)
    return found


def random_images(dataset: str, classes: int, per_class: int) -> LabelledImages:
    """Random uint8 images of a data set's shape, `per_class` of each of `classes` classes (on the CPU,
    as loaded data sets are; the sampler moves them to its device)."""
    size, channels = DEFAULT_IMAGE_SIZE[dataset], CHANNELS[dataset]
    generator = torch.Generator().manual_seed(0)
    shape = (classes * per_class, channels, size, size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return LabelledImages(images, labels, [str(c) for c in range(classes)])


def meta_batch(case: Case, tasks: int, device: torch.device, dtype: torch.dtype) -> TaskBatch:
    """A meta-batch of `tasks` random tasks in the case's shape."""
    data = random_images(case.dataset, max(case.ways, 20), case.shots + case.queries)
    sampler = EpisodeSampler(data, case.ways, case.shots, case.queries, device, dtype)
    return sampler.sample(tasks, sampler.generator(0))


def gradient_error(
    case: Case,
    implementation: Implementation,
    device: torch.device,
    within: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """Largest difference between an implementation's meta-gradient and the per-task float64 reference,
    on two tasks; the implementation runs `within` a context (a variant of the layers), the reference
    outside it."""
    torch.manual_seed(0)
    learner = build_learner(case.config()).to(device, torch.float64)
    batch = meta_batch(case, 2, device, torch.float64)
    torch.manual_seed(1)  # the same noise for both, for algorithms that sample (LEO)
    reference = {k: v.clone() for k, v in fewsight_implementation(per_task=True)(learner, batch)().items()}
    torch.manual_seed(1)
    with within():
        measured = implementation(learner, batch)()
    if measured.keys() != reference.keys():
        return float("inf")
    return max(float((measured[k].double() - reference[k]).abs().max()) for k in reference)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_meta_steps(
    step: MetaGradient, device: torch.device, repeats: int, max_seconds: float
) -> tuple[float, list[float]]:
    """Seconds of the first call (tracing, kernel selection), then of `repeats` later calls (fewer
    if `max_seconds` runs out first; at least three)."""
    start = time.perf_counter()
    step()
    _synchronize(device)
    first = time.perf_counter() - start
    step()  # a second warm-up: cudnn.benchmark and allocators settle on the first calls
    _synchronize(device)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return first, times


def _allocated(device: torch.device) -> int:
    """Bytes still allocated on a GPU once garbage (earlier rows' graphs and pools) is collected."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)


def measure(
    case: Case,
    name: str,
    implementation: Implementation,
    device: torch.device,
    repeats: int = 20,
    max_seconds: float = 8.0,
    check: bool = True,
) -> Row:
    """Check one implementation's meta-gradient, then time it on a full meta-batch. Its peak memory
    counts what it allocates (weights, meta-batch, step) over what earlier rows left allocated."""
    error = gradient_error(case, implementation, device) if check else None
    before = _allocated(device)
    torch.manual_seed(0)
    learner = build_learner(case.config()).to(device)
    batch = meta_batch(case, case.meta_batch, device, torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first, times = time_meta_steps(implementation(learner, batch), device, repeats, max_seconds)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else None
    median = statistics.median(times)
    return Row(case.name, case.algorithm, name, 1000 * median, case.meta_batch / median, peak, first, error)


def run_suite(
    cases: Iterable[Case],
    device: torch.device,
    extra: Callable[[Case], dict[str, Implementation]] = lambda case: {},
    repeats: int = 20,
    max_seconds: float = 8.0,
    report: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """Every implementation of every case; `extra` adds implementations (peers) for a case."""
    rows = []
    for case in cases:
        for name, implementation in {**implementations(case), **extra(case)}.items():
            check = "bf16" not in name  # bf16 cannot match a float64 reference; its accuracy is trained
            row = measure(case, name, implementation, device, repeats, max_seconds, check)
            report(row)
            rows.append(row)
    return rows


def sampler_speed(device: torch.device, tasks: int, seconds: float = 2.0) -> float:
    """Omniglot 5-way 1-shot episodes (15 queries) drawn per second, in meta-batches of `tasks`."""
    sampler = EpisodeSampler(random_images("omniglot", 1623, 20), 5, 1, 15, device)
    generator = sampler.generator(0)
    sampler.sample(tasks, generator)
    _synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            sampler.sample(tasks, generator)
        calls += 10
        _synchronize(device)
    return calls * tasks / (time.perf_counter() - start)


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table, with each case's speed-up over its per-task loop."""
    loops = {(row.case, row.algorithm): row for row in rows if row.implementation == "per-task loop"}
    lines = [
        "| setting | algorithm | implementation | ms / meta-step | tasks / s | vs loop | peak MiB "
        "| first step (s) | gradient error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        loop = loops.get((row.case, row.algorithm))
        speedup = "" if loop is None else f"{loop.ms_per_step / row.ms_per_step:.1f}x"
        peak = "" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        error = "not checked" if row.gradient_error is None else f"{row.gradient_error:.1e}"
        lines.append(
            f"| {row.case} | {row.algorithm} | {row.implementation} | {row.ms_per_step:.1f} "
            f"| {row.tasks_per_s:.0f} | {speedup} | {peak} | {row.first_step_s:.1f} | {error} |"
        )
    return "\n".join(lines) + "\n"


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(row) for row in rows]


def select(cases: Iterable[Case], datasets: list[str] | None, algorithms: list[str] | None) -> list[Case]:
    """The cases of the given data sets and algorithms (all when None)."""
    return [
        case
        for case in cases
        if (datasets is None or case.dataset in datasets)
        and (algorithms is None or case.algorithm in algorithms)
    ]
