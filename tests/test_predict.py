"""predict and export on real Omniglot drawings, with the bundled model and with a user's run."""

import zipfile
from pathlib import Path

import pytest

from fewsight.cli import main
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
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


def read_csv(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def test_bundled_model_recognises_unseen_characters(drawings, tmp_path):
    support, query = make_task(drawings, tmp_path, classes=5)
    assert (
        main(
            [
                "predict",
                "omniglot",
                "--support",
                str(support),
                "--query",
                str(query),
                "--csv",
                str(tmp_path / "out.csv"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 15
    correct = sum(Path(row[0]).name.split("-")[0] == row[1] for row in rows)
    assert correct >= 12, rows
    assert all(abs(sum(map(float, row[3:])) - 1) < 1e-3 for row in rows)


@pytest.mark.parametrize("classes", [2, 20])
def test_any_number_of_classes(drawings, tmp_path, classes, capsys):
    support, query = make_task(drawings, tmp_path, classes=classes, queries=1)
    assert (
        main(["predict", "omniglot", "--support", str(support), "--query", str(query), "--device", "cpu"])
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == classes


def test_exported_file_predicts_the_same_without_the_support_folder(drawings, tmp_path):
    support, query = make_task(drawings, tmp_path, classes=4)
    exported = tmp_path / "classifier.pt"
    assert (
        main(["export", "omniglot", "--support", str(support), "--out", str(exported), "--device", "cpu"])
        == 0
    )
    assert exported.stat().st_size < 1_000_000
    main(
        [
            "predict",
            "omniglot",
            "--support",
            str(support),
            "--query",
            str(query),
            "--csv",
            str(tmp_path / "a.csv"),
        ]
    )
    main(["predict", str(exported), "--query", str(query), "--csv", str(tmp_path / "b.csv")])
    assert read_csv(tmp_path / "a.csv") == read_csv(tmp_path / "b.csv")


def test_any_image_size_and_mode_is_converted(drawings, tmp_path, capsys):
    support, _ = make_task(drawings, tmp_path, classes=3)
    photo = next((SHARED_DATA / "miniimagenet-sample" / "images").iterdir())  # 84x84 colour JPEG
    assert main(["predict", "omniglot", "--support", str(support), "--query", str(photo)]) == 0
    assert photo.name in capsys.readouterr().out


def test_bad_support_and_queries_name_the_file_or_fix(drawings, tmp_path, capsys):
    support, query = make_task(drawings, tmp_path, classes=3)
    (support / "empty").mkdir()
    assert main(["predict", "omniglot", "--support", str(support), "--query", str(query)]) == 2
    assert "empty holds no images" in capsys.readouterr().err
    (support / "empty").rmdir()
    (support / "character01" / "notes.txt").write_text("not an image")
    assert main(["predict", "omniglot", "--support", str(support), "--query", str(query)]) == 2
    assert "notes.txt is not a readable image" in capsys.readouterr().err
    (support / "character01" / "notes.txt").unlink()
    assert (
        main(["predict", "omniglot", "--support", str(support), "--query", str(tmp_path / "nope.png")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "no-such-model", "--support", str(support), "--query", str(query)]) == 2
    assert "bundled model" in capsys.readouterr().err


def test_a_maml_run_takes_exactly_its_number_of_classes(omniglot_train, drawings, tmp_path, capsys):
    run = tmp_path / "run"
    main(
        [
            "train",
            "--steps",
            "1",
            "--meta-batch",
            "1",
            "--queries",
            "1",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(run),
        ]
    )
    support, query = make_task(drawings, tmp_path, classes=3)
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 2
    assert "takes exactly 5 classes" in capsys.readouterr().err
    five, query = make_task(drawings, tmp_path / "five", classes=5)
    assert main(["predict", str(run), "--support", str(five), "--query", str(query)]) == 0
