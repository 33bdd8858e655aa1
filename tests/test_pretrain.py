"""Base-class pre-training on the miniImageNet sample: runs, resumes exactly, and seeds --init."""

import json
import shutil

import pytest
import torch

from fewsight.cli import main
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.run.warmstart import backbone_of, load_backbone, run_backbone
from tests.conftest import SHARED_DATA, metrics, same

SAMPLE = SHARED_DATA / "miniimagenet-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/miniimagenet-sample is not here")
TINY = ["--width", "0.0625", "--image-size", "16", "--data-root", str(SAMPLE), "--device", "cpu", "--quiet"]
# 640 training images in batches of 128: 5 steps an epoch.
FLAGS = [*TINY, "--batch-size", "128", "--val-episodes", "2", "--log-every", "2", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", *FLAGS, "--epochs", "2", "--augment", "--out", str(run)]) == 0
    return run


def test_pretraining_writes_a_run_that_eval_scores(pretrained, capsys):
    rows = metrics(pretrained)
    assert [row["step"] for row in rows] == [2, 4, 5, 6, 8, 10]
    assert [row["step"] for row in rows if "val_accuracy" in row] == [5, 10]  # after every epoch
    assert rows[-1]["lr"] < 0.03 * rows[0]["lr"]  # the cosine schedule ends near 0
    saved = json.loads((pretrained / "config.json").read_text())
    assert saved["algorithm"] == "protonet" and saved["backbone"] == "resnet12"
    assert saved["pretrain"]["augment"] and saved["pretrain"]["epochs"] == 2
    capsys.readouterr()
    assert main(["eval", str(pretrained), *TINY[4:], "--queries", "5", "--episodes", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algorithm"] == "protonet" and result["backbone"] == "resnet12"
    assert result["widths"] == [4, 10, 20, 40]  # ResNet-12's 64-160-320-640 at --width 0.0625
    # trained on all training classes at once, not on episodes: no ways or shots to report
    assert (result["training"], result["trained_ways"], result["trained_shots"]) == ("pretrain", None, None)


def test_resume_ends_with_the_same_weights(pretrained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained, run)
    shutil.copy(run / "checkpoint-6.pt", run / "checkpoint.pt")  # as if killed after step 6
    assert main(["pretrain", *FLAGS, "--epochs", "2", "--resume", "--out", str(run)]) == 0
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    uninterrupted = torch.load(pretrained / "checkpoint.pt", weights_only=True)
    assert same(final, uninterrupted)

    def rows(folder):  # without the speed, which depends on the machine
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in metrics(folder)]

    assert rows(run) == rows(pretrained)


def test_init_copies_exactly_the_backbone(pretrained, tmp_path):
    config = RunConfig(
        dataset="miniimagenet", image_size=16, algorithm="maml", backbone="resnet12", width=0.0625
    )
    torch.manual_seed(0)
    learner = build_learner(config)
    head = {k: v.clone() for k, v in learner.model.head.state_dict().items()}
    load_backbone(learner, run_backbone(pretrained), str(pretrained))
    saved = torch.load(pretrained / "checkpoint.pt", weights_only=True)["learner"]
    for name, value in backbone_of(learner).state_dict().items():
        if name.startswith("head."):
            assert torch.equal(value, head[name.removeprefix("head.")])  # not copied
        else:
            assert torch.equal(value, saved[f"encoder.{name}"])


def test_train_from_a_pretrained_backbone(pretrained, tmp_path):
    run = tmp_path / "maml"
    flags = ["--algorithm", "fomaml", "--backbone", "resnet12", "--steps", "1", "--meta-batch", "1"]
    flags += ["--queries", "1", "--val-every", "1", "--val-episodes", "1", "--augment", "--drop-rate", "0.1"]
    assert (
        main(
            [
                "train",
                "--dataset",
                "miniimagenet",
                *flags,
                *TINY,
                "--init",
                str(pretrained),
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["init"] == str(pretrained.resolve())


@pytest.mark.parametrize("change", [["--width", "0.125"], ["--backbone", "conv4"]])
def test_a_backbone_that_does_not_fit_is_refused_before_data_is_loaded(pretrained, tmp_path, change, capsys):
    flags = ["--dataset", "miniimagenet", "--backbone", "resnet12", *TINY, "--init", str(pretrained)]
    assert main(["train", *flags, *change, "--out", str(tmp_path / "run")]) == 2
    assert "use the same --backbone" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_meta_baseline_cosine_pretraining_scoring_and_meta_training(tmp_path, capsys):
    """Classifier-Baseline (a pre-training run scored by cosine) then Meta-Baseline (--init from it)."""
    pre, meta = tmp_path / "pre", tmp_path / "meta"
    assert main(["pretrain", *FLAGS, "--epochs", "1", "--metric", "cosine", "--out", str(pre)]) == 0
    saved = json.loads((pre / "config.json").read_text())
    assert saved["metric"] == saved["pretrain"]["metric"] == "cosine"
    scored = {}
    for metric in ("cosine", "euclidean"):  # the run's own, then overridden
        override = [] if metric == "cosine" else ["--metric", metric]
        capsys.readouterr()
        assert (
            main(["eval", str(pre), *TINY[4:], "--queries", "5", "--episodes", "2", "--json", *override]) == 0
        )
        scored[metric] = json.loads(capsys.readouterr().out)
    assert scored["cosine"]["metric"] == "cosine" and scored["euclidean"]["metric"] == "euclidean"
    flags = ["--algorithm", "protonet", "--metric", "cosine", "--backbone", "resnet12", "--steps", "1"]
    flags += ["--meta-batch", "1", "--queries", "1", "--val-every", "1", "--val-episodes", "1"]
    assert (
        main(["train", "--dataset", "miniimagenet", *flags, *TINY, "--init", str(pre), "--out", str(meta)])
        == 0
    )
    learner = torch.load(meta / "checkpoint.pt", weights_only=True)["learner"]
    assert 0 < abs(learner["temperature"].item() - 10) < 0.01  # from 10, one Adam step of --meta-lr


def test_meta_baselines_classifier_recipe(tmp_path, capsys):
    """resnet12-512, ImageNet input statistics, crop and flip without jitter, a tenfold drop at an epoch."""
    run = tmp_path / "classifier"
    recipe = ["--backbone", "resnet12-512", "--input-norm", "imagenet", "--augment", "--no-jitter"]
    recipe += ["--lr-drop-epoch", "1"]  # 0.1 for 1 epoch, then 0.01, as Meta-Baseline's 90 of 100
    recipe += ["--bf16", "--no-bf16"]  # the later flag wins: a recipe's --bf16 can be undone
    assert main(["pretrain", *FLAGS, "--epochs", "2", *recipe, "--out", str(run)]) == 0
    rows = metrics(run)
    assert {row["lr"] for row in rows if row["step"] <= 5} == {0.1}  # epoch 1: steps 1-5
    assert {round(row["lr"], 12) for row in rows if row["step"] > 5} == {0.01}
    saved = json.loads((run / "config.json").read_text())
    assert (saved["backbone"], saved["input_norm"], saved["drop_rate"]) == ("resnet12-512", "imagenet", 0.0)
    assert saved["pretrain"]["jitter"] is False and saved["pretrain"]["lr_drop_epoch"] == 1
    assert saved["pretrain"]["bf16"] is False
    capsys.readouterr()
    assert main(["eval", str(run), *TINY[4:], "--queries", "5", "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["widths"] == [4, 8, 16, 32]  # 64-128-256-512 at 0.0625
    flags = ["--dataset", "miniimagenet", "--algorithm", "protonet", "--backbone", "resnet12-512", *TINY]
    assert main(["train", *flags, "--init", str(run), "--out", str(tmp_path / "stage")]) == 2
    assert "normalised by --input-norm imagenet, this run's by none; use --input-norm imagenet" in (
        capsys.readouterr().err
    )
    assert main(["pretrain", *FLAGS, "--no-jitter", "--out", str(tmp_path / "bad")]) == 2
    assert "--no-jitter changes --augment: add --augment, or drop --no-jitter" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backbone", "layout"),
    [
        ("resnet12-512", torch.contiguous_format),
        ("conv4", torch.contiguous_format),
        ("resnet12-512", torch.channels_last),
    ],
)
def test_batch_norm_groups_normalise_each_group_on_its_own(backbone, layout):
    """--bn-batch 4 of 8 images: features and gradients (float64) are those of two separate batches,
    also in the channels-last layout that pre-training uses on a GPU."""
    from fewsight.training.pretrain import grouped_features

    torch.manual_seed(0)
    run = RunConfig(dataset="miniimagenet", algorithm="protonet", backbone=backbone, width=0.0625)
    net = build_learner(run).encoder.double().to(memory_format=layout)
    images = torch.randn(8, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    grouped = grouped_features(net, images, 4)
    separate = torch.cat([net(images[:4]), net(images[4:])])
    torch.testing.assert_close(grouped, separate, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(grouped, net(images))  # one batch of 8 normalises differently
    inputs = [images, *net.parameters()]
    gradients = torch.autograd.grad(grouped.square().sum(), inputs)
    expected = torch.autograd.grad(separate.square().sum(), inputs)
    for got, want in zip(gradients, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(grouped_features(net, images, 8), net(images))  # one group: the whole batch


@pytest.mark.parametrize("backbone", ["resnet12-512", "conv4"])
def test_first_order_layers_are_torchs_own_with_the_same_values_and_gradients(backbone, monkeypatch):
    """Within `first_order` (pre-training, Meta-Baseline's stage) the convolutions and batch norms
    call torch's functions and none of fewsight's autograd Functions, with the same features and
    gradients (float64); under vmap they keep their own rules, and each layer's setting comes back."""
    from fewsight.nets import batchnorm, conv
    from fewsight.nets.first_order import first_order

    torch.manual_seed(0)
    run = RunConfig(dataset="miniimagenet", algorithm="protonet", backbone=backbone, width=0.0625)
    net = build_learner(run).encoder.double()
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    inputs = [images, *net.parameters()]
    own = net(images)
    own_gradients = torch.autograd.grad(own.square().sum(), inputs)
    calls = []
    for function in (conv._SameConv, batchnorm._BatchNorm):
        monkeypatch.setattr(function, "apply", lambda *args, f=function.apply: calls.append(1) or f(*args))
    with first_order(net):
        torchs = net(images)
        assert not calls  # torch's functions alone
        torch.testing.assert_close(torchs, own, rtol=1e-12, atol=1e-12)
        for got, want in zip(torch.autograd.grad(torchs.square().sum(), inputs), own_gradients, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.vmap(net)(images.detach().unflatten(0, (2, 3)))
        assert calls  # under vmap: fewsight's rules
    assert not any(getattr(layer, "first_order", False) for layer in net.modules())


def test_batch_norm_groups_keep_the_channels_last_layout():
    """A channels-last input is normalised in groups without leaving its layout (where a layout
    change made every next convolution convert it back), in values and gradients as two batches."""
    from fewsight.nets.batchnorm import TaskBatchNorm, normalised_in_groups

    torch.manual_seed(0)
    norm = TaskBatchNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(8, 6, 5, 7, dtype=torch.float64) * 3 + 2
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    with normalised_in_groups(norm, 4):
        grouped = norm(x)
    assert grouped.is_contiguous(memory_format=torch.channels_last) and not grouped.is_contiguous()
    separate = torch.cat([norm(x[:4]), norm(x[4:])])
    torch.testing.assert_close(grouped, separate, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(grouped)
    got = torch.autograd.grad((grouped * upstream).sum(), [x, norm.weight, norm.bias])
    want = torch.autograd.grad((separate * upstream).sum(), [x, norm.weight, norm.bias])
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_batch_norm_groups_in_one_autograd_call_to_second_order():
    """The groups' one autograd call (`_GroupedBatchNorm`) has the derivatives of its formula, first
    and second (gradcheck, gradgradcheck in float64), for x, the scale and the shift."""
    from fewsight.nets.batchnorm import _GroupedBatchNorm

    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 3, 4, 4, dtype=torch.float64, generator=generator) * 2 + 1).requires_grad_()
    weight = torch.rand(3, dtype=torch.float64, generator=generator).add(0.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, generator=generator).requires_grad_()
    grouped = lambda x, w, b: _GroupedBatchNorm.apply(x, w, b, 1e-5, 2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(grouped, (x, weight, bias))
    assert torch.autograd.gradgradcheck(grouped, (x, weight, bias))


def test_batch_norm_groups_in_bf16_and_left_behind():
    """bf16 activations (autocast) are normalised in groups, close to float32, and stay bf16;
    the groups end with the context, even when the forward fails."""
    from fewsight.nets.batchnorm import TaskBatchNorm, normalised_in_groups

    torch.manual_seed(0)
    norm = TaskBatchNorm(6)
    x = torch.randn(8, 6, 5, 5) * 3 + 2
    with normalised_in_groups(norm, 4):
        low = norm(x.bfloat16())
        high = norm(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), high, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(high, torch.cat([norm(x[:4]), norm(x[4:])]), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError), normalised_in_groups(norm, 3):
        norm(x)  # 3 does not divide 8
    assert norm.group_size == 0
    assert not torch.allclose(norm(x), high, atol=1e-3)  # the whole batch again, not two groups


def test_pretraining_with_batch_norm_groups(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", *FLAGS, "--epochs", "1", "--bn-batch", "32", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["pretrain"]["bn_batch"] == 32
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in metrics(run))
    capsys.readouterr()
    assert main(["pretrain", *FLAGS, "--bn-batch", "48", "--out", str(tmp_path / "bad")]) == 2
    assert "--bn-batch must divide --batch-size 128" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_recorded_step_trains_as_the_eager_one_and_resumes_eagerly(tmp_path, monkeypatch):
    """The CUDA-graph path of pre-training, its recording stood in by eager reruns on the CPU (as in
    tests/test_graphs.py): the same weights as eager training after two epochs, with batch-norm
    groups, a learning-rate drop and bf16 autocast, and the cosine metric's temperature, which no step
    trains, left as it was; the run then resumes eagerly (--no-cuda-graphs) from its checkpoint,
    whose learning rates were saved as tensors."""
    from fewsight.training import graphs, pretrain
    from tests.conftest import capture_eagerly

    recordings = []
    monkeypatch.setattr(graphs, "capture", lambda step: recordings.append(1) or capture_eagerly(step))
    recipe = [
        "--backbone",
        "resnet12-512",
        "--metric",
        "cosine",
        "--bn-batch",
        "64",
        "--lr-drop-epoch",
        "1",
        "--bf16",
    ]
    runs = {}
    for recorded in (False, True):
        monkeypatch.setattr(
            pretrain, "records", lambda config, device, on=recorded: on and config.cuda_graphs
        )
        runs[recorded] = tmp_path / f"recorded-{recorded}"
        assert main(["pretrain", *FLAGS, "--epochs", "2", *recipe, "--out", str(runs[recorded])]) == 0
    assert recordings == [1]  # recorded once, at the first step, then replayed
    eager, graphed = (torch.load(runs[r] / "checkpoint.pt", weights_only=True) for r in (False, True))
    for part in ("learner", "head"):
        for name, value in eager[part].items():
            torch.testing.assert_close(graphed[part][name], value, rtol=1e-5, atol=1e-6)
    assert graphed["learner"]["temperature"] == eager["learner"]["temperature"] == 10.0
    assert all(torch.is_tensor(group["lr"]) for group in graphed["optimizer"]["param_groups"])
    resumed = ["pretrain", *FLAGS, "--epochs", "3", *recipe, "--no-cuda-graphs", "--resume"]
    assert main([*resumed, "--out", str(runs[True])]) == 0
    assert max(row["step"] for row in metrics(runs[True])) == 15


def test_crops_from_larger_training_images(tmp_path, capsys):
    """--crop-from 24: training images decoded at 24 pixels, cropped to --image-size 16; eval reads 16."""
    run = tmp_path / "run"
    flags = [*FLAGS, "--epochs", "1", "--augment"]
    assert main(["pretrain", *flags, "--crop-from", "24", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["pretrain"]["crop_from"] == 24
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in metrics(run))
    capsys.readouterr()
    assert main(["eval", str(run), *TINY[4:], "--queries", "5", "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shots"] == 1
    for bad, message in [
        (["--crop-from", "24"], "--crop-from sets where --augment's crops come from: add --augment"),
        (["--augment", "--crop-from", "8"], "--crop-from must be at least --image-size (16)"),
    ]:
        assert main(["pretrain", *FLAGS, *bad, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_int8_quantisation_keeps_every_weight_within_half_a_step():
    from fewsight.run.compact import SMALLEST, dequantise, quantise

    torch.manual_seed(0)
    state = {"conv": torch.randn(64, 32, 3, 3), "bias": torch.randn(64), "small": torch.randn(8, 8)}
    stored = quantise(state)
    assert stored["conv"]["int8"].dtype == torch.int8 and stored["conv"]["scale"].shape == (64,)
    assert stored["bias"] is state["bias"] and stored["small"] is state["small"]  # under SMALLEST
    assert state["small"].numel() < SMALLEST <= state["conv"].numel()
    restored = dequantise(stored)
    step = stored["conv"]["scale"].view(-1, 1, 1, 1)
    assert ((restored["conv"] - state["conv"]).abs() <= step / 2 + 1e-7).all()
    assert (state["conv"].abs().flatten(1).amax(1) == (127 * stored["conv"]["scale"])).all()
    moments = {"second_moment_4": torch.rand(64, 32, 3, 3) * 1e-9}  # Reptile's Adam: kept exact
    assert quantise(moments)["second_moment_4"] is moments["second_moment_4"]


def test_a_bundled_int8_model_loads_and_computes_what_its_run_does(pretrained, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from fewsight.use.models import load_model

    script = Path(__file__).parent.parent / "benchmarks" / "bundle_model.py"
    out = tmp_path / "bundled"
    subprocess.run([sys.executable, str(script), str(pretrained), str(out), "--int8"], check=True)
    stored = torch.load(out / "checkpoint.pt", weights_only=True)
    assert any(isinstance(value, dict) for value in stored["learner"].values())  # some weights in int8
    assert stored.keys() == {"learner", "step"} and stored["step"] == 10
    original, bundled = load_model(str(pretrained))[1], load_model(str(out))[1]
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        expected, got = original.encoder(x), bundled.encoder(x)
    assert 0 < (got - expected).norm() / expected.norm() < 0.02
