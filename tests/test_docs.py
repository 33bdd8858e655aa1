"""Every Python snippet of the README and docs/ runs as written, each document's snippets in order in
one namespace, with its loop lengths shortened (listed below) so that the suite stays fast."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fewsight.serve
from fewsight.cli import main
from tests.conftest import make_task

ROOT = Path(__file__).resolve().parents[1]
SHORTER = {"range(1000)": "range(2)", "episodes=1000": "episodes=20"}


def snippets(document: Path) -> list[str]:
    text = document.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    for long, short in SHORTER.items():
        blocks = [block.replace(long, short) for block in blocks]
    return blocks


def test_every_document_with_python_has_its_snippets_tested():
    documents = {p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]}
    with_python = {d for d in documents if snippets(ROOT / d)}
    assert with_python == {"README.md", "docs/API.md", "docs/SERVE.md"}


@pytest.mark.parametrize("document", ["README.md", "docs/API.md"])
def test_the_python_snippets_run(document, monkeypatch, tmp_path):
    served = []
    monkeypatch.setattr(fewsight.serve, "serve", lambda session, **where: served.append((session, where)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in snippets(ROOT / document):
        exec(compile(block, document, "exec"), namespace)
    if document == "docs/API.md":
        assert len(namespace["onnx_file"]) > 0 and served[0][1] == {"host": "127.0.0.1", "port": 8765}


def test_the_onnx_snippet_runs(drawings, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    support, _ = make_task(drawings, tmp_path / "photos", classes=3)
    monkeypatch.chdir(tmp_path)
    assert (
        main(["export", "omniglot", "--support", str(support), "--format", "onnx", "--out", "angelic.onnx"])
        == 0
    )
    namespace = {"images": np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)}
    for block in snippets(ROOT / "docs/SERVE.md"):
        exec(compile(block, "docs/SERVE.md", "exec"), namespace)
    assert namespace["logits"].shape == (4, 3) and len(namespace["names"]) == 3
