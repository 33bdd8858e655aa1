"""fewsight export --format onnx: ONNX Runtime gives the PyTorch classifier's logits on real
Omniglot drawings and photos, to float32 rounding, for the bundled models (the miniImageNet Meta-Baseline
with its fixed batch-norm statistics) and for a MAML run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fewsight.cli import main
from fewsight.run.build import build_learner
from fewsight.run.config import RunConfig
from fewsight.use.export import load_exported
from fewsight.use.onnx import onnx_bytes
from fewsight.use.predict import load_images, query_paths
from tests.conftest import make_task

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def assert_same_logits(onnx_file: Path, exported: Path, queries: Path) -> list[str]:
    """ONNX Runtime's logits equal the exported PyTorch classifier's on the query images."""
    config, classifier, names = load_exported(exported)
    images = load_images(query_paths([queries]), config)
    with torch.no_grad():
        expected = classifier(images)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    scale = expected.abs().max().item()
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-5, atol=1e-5 * scale)
    assert (torch.from_numpy(logits).argmax(-1) == expected.argmax(-1)).all()
    metadata = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(metadata["class_names"]) == names
    return names


def export(model: str, support: Path, out: Path, format: str | None) -> None:
    args = ["export", model, "--out", str(out), "--device", "cpu"]
    args += ["--format", format] if format else []
    assert main([*args, "--support", str(support)] if support else args) == 0


@pytest.mark.parametrize("classes", [5, 20])
def test_bundled_protonet_runs_the_same_in_onnx_runtime(drawings, tmp_path, classes):
    support, queries = make_task(drawings, tmp_path, classes=classes, queries=2)
    export("omniglot", support, tmp_path / "c.pt", "pt")
    export("omniglot", support, tmp_path / "c.onnx", None)  # the suffix asks for ONNX
    assert len(assert_same_logits(tmp_path / "c.onnx", tmp_path / "c.pt", queries)) == classes


def test_bundled_miniimagenet_model_runs_the_same_in_onnx_runtime(mini_test_photos, tmp_path):
    queries = tmp_path / "query"
    queries.mkdir()
    for label, photos in list(mini_test_photos.items())[:3]:
        (tmp_path / "support" / label).mkdir(parents=True)
        shutil.copy(photos[0], tmp_path / "support" / label)
        for photo in photos[1:3]:
            shutil.copy(photo, queries / f"{label}-{photo.name}")
    export("miniimagenet", tmp_path / "support", tmp_path / "c.pt", "pt")
    export("miniimagenet", tmp_path / "support", tmp_path / "c.onnx", "onnx")
    assert len(assert_same_logits(tmp_path / "c.onnx", tmp_path / "c.pt", queries)) == 3


def test_maml_adapted_weights_run_the_same_in_onnx_runtime(drawings, tmp_path, maml_run):
    support, queries = make_task(drawings, tmp_path, classes=3, queries=4)
    export(str(maml_run), support, tmp_path / "c.pt", "pt")
    export(str(tmp_path / "c.pt"), None, tmp_path / "c.onnx", "onnx")  # from the exported file
    assert_same_logits(tmp_path / "c.onnx", tmp_path / "c.pt", queries)


@pytest.mark.parametrize("algorithm", ["anil", "metasgd", "weightpred", "hypernet", "leo"])
def test_the_other_algorithms_export(algorithm):
    """Untrained learners (equal batch-norm scales everywhere: the exporter merges them), whose
    queries are normalised with the support set's statistics."""
    generator = torch.Generator().manual_seed(0)
    support_x, support_y = torch.rand(6, 1, 28, 28, generator=generator), torch.tensor([0, 1, 2] * 2)
    queries = torch.rand(4, 1, 28, 28, generator=generator)
    config = RunConfig(algorithm=algorithm, ways=3, transductive=False)
    classifier = build_learner(config).eval().adapt(support_x, support_y)
    session = ort.InferenceSession(onnx_bytes(classifier, config, ["a", "b", "c"]))
    (logits,) = session.run(None, {"images": queries.numpy()})
    with torch.no_grad():
        expected = classifier(queries)
    scale = expected.abs().max().item()
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-5, atol=1e-5 * scale)


def test_a_pt_file_is_not_exported_again(tmp_path, capsys):
    (tmp_path / "c.pt").write_bytes(b"x")
    assert main(["export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "d.pt")]) == 2
    assert "--format onnx converts it" in capsys.readouterr().err


def test_an_out_suffix_that_contradicts_the_format_is_refused(tmp_path, capsys):
    for out, format in (("c.onnx", "pt"), ("c.pt", "onnx")):
        assert main(["export", "omniglot", "--out", str(tmp_path / out), "--format", format]) == 2
        assert "make them agree" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_out_that_is_a_folder_or_under_a_file_is_refused_in_one_line(drawings, tmp_path, capsys):
    assert main(["export", "omniglot", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; name a file in it" in capsys.readouterr().err
    support, _ = make_task(drawings, tmp_path, classes=2)
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "c.pt"
    assert main(["export", "omniglot", "--support", str(support), "--out", str(out), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--out {out}: cannot make the folder {out.parent}" in error
