"""Inputs: every flag and setting is checked before any work; random ones give a result or one clear error."""

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fewsight.run.build
import fewsight.training.metatrain
from fewsight.cli import main
from fewsight.data import EpisodeSampler, LabelledImages
from fewsight.errors import FewsightError
from fewsight.run.config import ALGORITHMS, GRADIENT_BASED


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: exit status, stdout, stderr (argparse's exit included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_info:
            status = exit_info.code
    return status, out.getvalue(), err.getvalue()


def assert_clear_error(status: int, err: str) -> None:
    """Exit status 2 with a one-line message (or argparse's usage and message), never a traceback."""
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    prefixes = ("fewsight: error: ", "fewsight train: error: ", "fewsight eval: error: ")
    assert lines and lines[-1].startswith(prefixes)
    assert len(lines) == 1 or lines[0].startswith("usage:")


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: the command must have stopped before any work."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    monkeypatch.setattr(fewsight.training.metatrain, "load_split", forbidden)
    monkeypatch.setattr(fewsight.run.build, "load_split", forbidden)


@pytest.fixture(scope="module")
def trained(omniglot_train, tmp_path_factory) -> Path:
    """A run of two steps, for eval and --resume."""
    run = tmp_path_factory.mktemp("trained") / "run"
    argv = ["train", "--steps", "2", "--meta-batch", "2", "--queries", "2", "--trainval", "--quiet"]
    assert main([*argv, "--device", "cpu", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--inner-lr", "nan"], "--inner-lr and --meta-lr must be positive and finite"),
        (["--meta-lr", "inf"], "--inner-lr and --meta-lr must be positive and finite"),
        (["--meta-lr=-1e-3"], "--inner-lr and --meta-lr must be positive and finite"),
        (["--seed", "-1"], "--seed must be between 0 and 2**64 - 1"),
        (["--seed", str(2**64)], "--seed must be between 0 and 2**64 - 1"),
        (["--image-size", "200"], "--image-size must be between 16"),
        (["--image-size", "8"], "--image-size must be between 16"),
        (["--shots", "15", "--queries", "10"], "need classes of at least 25 images, but Omniglot has 20"),
        (["--val-episodes", "0"], "--val-episodes must be at least 1"),
        (["--device", "meta"], "unsupported device 'meta'"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--device", "cuda:99"], "CUDA device"),
        (["--cosine-floor", "0.5"], "--cosine-floor shapes the cosine schedule: add --cosine-lr"),
        (["--cosine-lr", "--cosine-floor", "-1"], "--cosine-floor is a fraction of --meta-lr"),
    ],
)
def test_bad_train_flags_stop_before_any_work(no_data, tmp_path, argv, message):
    status, _, err = run_cli(["train", *argv, "--quiet", "--out", str(tmp_path / "run")])
    assert_clear_error(status, err)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_is_refused(no_data, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    status, _, err = run_cli(["train", "--device", "cpu", "--out", str(tmp_path / "file")])
    assert_clear_error(status, err)
    assert "is a file; --out must name a folder" in err


def test_out_below_a_file_is_refused_in_one_line(no_data, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    status, _, err = run_cli(["train", "--device", "cpu", "--out", str(tmp_path / "file" / "run")])
    assert_clear_error(status, err)
    assert "cannot make that folder" in err and "choose a path where you can write" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seed", "-5"], "--seed must be between"),
        (["--episodes", "0"], "--episodes and --batch must be at least 1"),
        (["--batch", "-1"], "--episodes and --batch must be at least 1"),
        (["--ways", "0"], "--ways must be at least 2"),  # not read as "the run's ways"
        (["--shots", "0"], "--shots must be at least 1"),
        (["--queries", "-2"], "--queries must be at least 1"),
        (["--device", "meta"], "unsupported device"),
    ],
)
def test_bad_eval_flags_stop_before_any_work(trained, no_data, argv, message):
    status, _, err = run_cli(["eval", str(trained), *argv, "--quiet"])
    assert_clear_error(status, err)
    assert message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"ways": "five"}', "setting ways must be int, not 'five'"),
        ('{"inner_lr": true}', "setting inner_lr must be float, not True"),
        ('{"ways": 5', "is not valid JSON"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"protocol": "other"}', "unknown protocol 'other'"),
    ],
)
def test_a_hand_edited_config_is_reported(no_data, tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    for argv in (["eval", str(tmp_path)], ["train", "--out", str(tmp_path), "--resume"]):
        status, _, err = run_cli([*argv, "--quiet", "--device", "cpu"])
        assert_clear_error(status, err)
        assert message in err


def ints(low: int | None = None, high: int | None = None) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(str)


def not_an_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


BAD_RATES = st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, -math.inf])).map(repr)
BAD_DEVICES = st.sampled_from(["meta", "gpu", "cuda:99", "", "cpu:x"])
# Each flag: values that must be accepted (in a short run) and values that must be refused.
TRAIN = {
    "--steps": (ints(1, 2), ints(high=0)),
    "--meta-batch": (ints(1, 2), ints(high=0)),
    "--queries": (ints(1, 2), ints(20)),
    "--val-episodes": (ints(1, 2), ints(high=0)),
    "--ways": (ints(2, 5), st.one_of(ints(high=1), ints(5000))),
    "--shots": (ints(1, 2), st.one_of(ints(high=0), ints(20))),
    "--inner-steps": (ints(1, 2), ints(high=0)),
    "--eval-inner-steps": (ints(1, 2), ints(high=0)),
    "--inner-lr": (st.floats(1e-4, 0.5).map(repr), BAD_RATES),
    "--meta-lr": (st.floats(1e-5, 1e-2).map(repr), BAD_RATES),
    "--image-size": (st.just("28"), st.one_of(ints(high=15), ints(106))),
    "--seed": (ints(0, 2**64 - 1), st.one_of(ints(high=-1), ints(2**64))),
    "--val-every": (ints(1, 2), ints(high=0)),
    "--log-every": (ints(1, 2), ints(high=0)),
    "--checkpoint-every": (ints(1, 2), ints(high=0)),
    "--algorithm": (st.sampled_from(ALGORITHMS), st.nothing()),
    "--protocol": (st.sampled_from(["maml", "lake"]), st.nothing()),
    "--device": (st.just("cpu"), BAD_DEVICES),
}
ALWAYS = ("--steps", "--meta-batch", "--queries", "--val-episodes", "--episodes", "--device")  # short runs
SWITCHES = ["--trainval", "--non-transductive", "--bf16"]
EVAL = {
    "--episodes": (ints(1, 4), ints(high=0)),
    "--batch": (ints(1, 4), ints(high=0)),
    "--seed": (ints(0, 2**64 - 1), st.one_of(ints(high=-1), ints(2**64))),
    "--split": (st.sampled_from(["test", "val", "train"]), st.nothing()),
    "--device": (st.just("cpu"), BAD_DEVICES),
}


@st.composite
def command_lines(draw) -> tuple[list[str], bool]:
    """A random train or eval command line, and whether it has faults (values that must be refused)."""
    command = draw(st.sampled_from(["train", "train", "eval"]))
    table = TRAIN if command == "train" else EVAL
    good = {flag: accepted for flag, (accepted, _) in table.items()}
    always = {flag: good.pop(flag) for flag in ALWAYS if flag in good}
    flags = draw(st.fixed_dictionaries(always, optional=good))
    refusable = sorted(flag for flag in flags if not table[flag][1].is_empty)
    faults = draw(st.lists(st.sampled_from(refusable), unique=True, max_size=2))
    for flag in faults:
        flags[flag] = draw(table[flag][1])
    numeric = [flag for flag in flags if flag not in ("--algorithm", "--protocol", "--split", "--device")]
    if draw(st.integers(0, 5)) == 0:  # not a number at all
        faults.append(flag := draw(st.sampled_from(numeric)))
        flags[flag] = draw(st.text(max_size=4).filter(not_an_int))
    argv = [command, *(f"{flag}={value}" for flag, value in flags.items())]
    if command == "train":
        argv += draw(st.lists(st.sampled_from(SWITCHES), unique=True))
        if draw(st.integers(0, 5)) == 0:  # --resume of a folder that holds no run
            argv.append("--resume")
            faults.append("--resume")
    return [*argv, "--quiet"], bool(faults)


def check_run(run: Path, argv: list[str]) -> None:
    """A successful training run holds finite weights of the asked shape, trained the asked steps."""
    asked = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["step"] == int(asked["--steps"])
    if asked.get("--algorithm", "maml") in GRADIENT_BASED:  # the model-based family has no fixed head
        assert saved["learner"]["model.head.weight"].shape == (int(asked.get("--ways", 5)), 64)
    assert all(value.isfinite().all() for value in saved["learner"].values())
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == saved["step"]


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=command_lines())
def test_random_command_lines_give_a_result_or_a_clear_error(trained, case):
    argv, faulty = case
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        full = [*argv, f"--out={run}"] if argv[0] == "train" else [argv[0], str(trained), *argv[1:]]
        status, out, err = run_cli(full)
        event(f"{argv[0]} {'refused' if status else 'accepted'}")
        if faulty:
            assert_clear_error(status, err)
        else:
            assert status == 0, err
            if argv[0] == "train":
                check_run(run, argv)
            else:
                assert "maml 5-way 1-shot" in out


@st.composite
def labelled_images(draw) -> LabelledImages:
    """Up to 8 classes of 0 to 6 tiny images each; every image's pixels hold its own index."""
    counts = draw(st.lists(st.integers(0, 6), max_size=8))
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return LabelledImages(images.contiguous(), labels, [f"class{c}" for c in range(len(counts))])


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    data=labelled_images(),
    ways=st.integers(-1, 9),
    shots=st.integers(-1, 4),
    queries=st.integers(-1, 4),
    tasks=st.integers(-2, 5),
    seed=st.integers(0, 2**32),
)
def test_random_episode_settings_give_correct_tasks_or_a_clear_error(data, ways, shots, queries, tasks, seed):
    counts = data.images_per_class()
    possible = ways >= 2 and shots >= 1 and queries >= 1 and tasks >= 1
    possible = possible and int((counts >= shots + queries).sum()) >= ways
    try:
        sampler = EpisodeSampler(data, ways, shots, queries)
        batch = sampler.sample(tasks, sampler.generator(seed))
    except FewsightError as error:
        assert not possible and str(error) and "\n" not in str(error)
        return
    assert possible
    assert batch.support_x.shape == (tasks, ways * shots, 1, 2, 2)
    assert batch.query_x.shape == (tasks, ways * queries, 1, 2, 2)
    for t in range(tasks):
        support = (batch.support_x[t, :, 0, 0, 0] * 255).round().long()
        query = (batch.query_x[t, :, 0, 0, 0] * 255).round().long()
        assert len(set(support.tolist() + query.tolist())) == ways * (shots + queries), "an image repeats"
        classes = []
        for label in range(ways):
            drawn = torch.cat([support[batch.support_y[t] == label], query[batch.query_y[t] == label]])
            assert len(drawn) == shots + queries
            assert len(set(data.labels[drawn].tolist())) == 1, "a label mixes classes"
            classes.append(int(data.labels[drawn[0]]))
        assert len(set(classes)) == ways, "a class appears under two labels"
    assert not math.isnan(batch.support_x.sum())


def test_norm_scale_init_draws_the_scales_from_0_to_1_and_is_recorded(tmp_path):
    from fewsight.nets import TaskBatchNorm
    from fewsight.run.build import build_backbone
    from fewsight.run.config import RunConfig
    from fewsight.use.models import load_model
    from tests.conftest import train_tiny

    def scales(config: RunConfig) -> torch.Tensor:
        backbone = build_backbone(config, 5)
        return torch.cat([m.weight.detach() for m in backbone.modules() if isinstance(m, TaskBatchNorm)])

    torch.manual_seed(0)
    drawn = scales(RunConfig(norm_scale_init="uniform"))
    assert len(drawn) == 4 * 64 and ((drawn > 0) & (drawn < 1)).all() and drawn.std() > 0.2
    assert torch.equal(scales(RunConfig()), torch.ones(4 * 64))
    train_tiny(tmp_path / "run", "--norm-scale-init", "uniform")
    config, _ = load_model(str(tmp_path / "run"))
    assert config.norm_scale_init == "uniform"
    status, _, err = run_cli(["train", "--norm-scale-init", "zeros", "--out", str(tmp_path / "bad")])
    assert_clear_error(status, err)
    assert "unknown --norm-scale-init 'zeros'; use one of ones, uniform, fixed" in err


def test_the_maml_codes_initialisation_is_recorded_and_its_fixed_scales_stay_at_1(tmp_path):
    """--weight-init xavier --norm-scale-init fixed --no-adapt-norm: the MAML paper's code's Conv4."""
    from fewsight.nets import TaskBatchNorm
    from fewsight.run.config import RunConfig
    from fewsight.use.models import load_model
    from tests.conftest import train_tiny

    train_tiny(tmp_path / "run", "--weight-init", "xavier", "--norm-scale-init", "fixed", "--no-adapt-norm")
    config, learner = load_model(str(tmp_path / "run"))
    assert (config.weight_init, config.norm_scale_init, config.adapt_norm) == ("xavier", "fixed", False)
    norms = [m for m in learner.modules() if isinstance(m, TaskBatchNorm)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert any(m.bias.abs().max() > 0 for m in norms), "the shifts are meta-learned"
    status, _, err = run_cli(
        ["train", "--algorithm", "protonet", "--no-adapt-norm", "--out", str(tmp_path / "b")]
    )
    assert_clear_error(status, err)
    assert "--no-adapt-norm applies to --algorithm maml, fomaml or mamlpp only; drop it" in err
    undone = ["--no-adapt-norm", "--adapt-norm", "--steps", "1"]  # a recipe's flag undone by a later one
    train_tiny(tmp_path / "again", "--norm-scale-init", "fixed", *undone)
    assert RunConfig.load(tmp_path / "again").adapt_norm
    status, _, err = run_cli(["train", "--weight-init", "kaiming", "--out", str(tmp_path / "bad")])
    assert_clear_error(status, err)
    assert "invalid choice: 'kaiming'" in err
