"""predict and export on real Omniglot drawings, with the bundled model and with a user's run."""

import json
from pathlib import Path

import pytest

from fewsight.cli import main
from tests.conftest import SHARED_DATA, make_task, train_tiny


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
    train_tiny(run)
    support, query = make_task(drawings, tmp_path, classes=3)
    assert main(["predict", str(run), "--support", str(support), "--query", str(query)]) == 2
    assert "takes exactly 5 classes" in capsys.readouterr().err
    five, query = make_task(drawings, tmp_path / "five", classes=5)
    assert main(["predict", str(run), "--support", str(five), "--query", str(query)]) == 0


def test_training_on_your_own_image_folder_and_csv(drawings, tmp_path):
    run = tmp_path / "run"
    args = [
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "2",
        "--meta-batch",
        "2",
        "--steps",
        "2",
        "--val-every",
        "2",
        "--val-episodes",
        "2",
        "--image-size",
        "28",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert (
        main(["train", "--dataset", str(drawings), "--algorithm", "protonet", *args, "--out", str(run)]) == 0
    )
    split = json.loads((run / "config.json").read_text())["class_split"]
    assert [len(split[name]) for name in ("train", "val", "test")] == [12, 4, 4]
    assert not set(split["train"]) & set(split["test"])
    assert main(["eval", str(run), "--episodes", "2", "--quiet", "--device", "cpu"]) == 0
    table = tmp_path / "images.csv"
    rows = [f"{f.relative_to(drawings.parent)},{f.parent.name}" for f in sorted(drawings.glob("*/*.png"))]
    table.write_text("file,label\n" + "\n".join(rows) + "\n")
    (drawings.parent / table.name).write_text(table.read_text())
    csv_run = tmp_path / "csv-run"
    assert main(["train", "--dataset", str(drawings.parent / table.name), *args, "--out", str(csv_run)]) == 0
    assert json.loads((csv_run / "config.json").read_text())["class_split"] == split


def test_bundled_miniimagenet_model_recognises_unseen_classes(mini_test_photos, tmp_path):
    """The `miniimagenet` model on 5 test classes of the sample (never seen in training): 5 photos
    each as support, 5 others as queries; well above the 20% of chance."""
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir()
    for label in list(mini_test_photos)[:5]:
        (support / label).mkdir(parents=True)
        photos = mini_test_photos[label]
        for photo in photos[:5]:
            (support / label / photo.name).write_bytes(photo.read_bytes())
        for photo in photos[5:10]:
            (query / f"{label}-{photo.name}").write_bytes(photo.read_bytes())
    out = tmp_path / "out.csv"
    args = ["predict", "miniimagenet", "--support", str(support), "--query", str(query), "--csv", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    predictions = read_csv(out)
    assert len(predictions) == 25
    correct = sum(Path(row[0]).name.split("-")[0] == row[1] for row in predictions)
    assert correct >= 9, predictions


def test_a_folder_too_small_to_validate_on_says_what_to_do(drawings, tmp_path, capsys):
    support, _ = make_task(drawings, tmp_path, classes=3, shots=4, queries=0)  # 60/20/20: 1 val class
    argv = ["train", "--dataset", str(support), "--algorithm", "protonet", "--ways", "2", "--shots", "1"]
    argv += ["--queries", "1", "--steps", "1", "--image-size", "28", "--quiet", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "the validation split has 1 class, too few for 2-way episodes" in error and "--trainval" in error
    assert main([*argv, "--trainval", "--out", str(tmp_path / "run")]) == 0
