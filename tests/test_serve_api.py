"""fewsight serve's JSON API on a real server: every endpoint, on real Omniglot drawings, and every
kind of bad upload refused with a message that names the file."""

from __future__ import annotations

import csv
import io
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from PIL import Image

from fewsight.cli import main
from fewsight.serve import Limits, Session, create_app
from fewsight.serve.openapi import PATHS
from fewsight.serve.server import bind
from fewsight.use.export import load_exported
from fewsight.use.predict import load_images
from tests.serving import post_files, post_json, request, running


def files(drawings: Path, character: int, images: slice) -> list[tuple[str, bytes]]:
    folder = drawings / f"character{character:02d}"
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())[images]]


def teach(url: str, drawings: Path, classes: int, shots: int = 2) -> None:
    """Make classes character01.. with `shots` drawings each."""
    for c in range(1, classes + 1):
        name = f"character{c:02d}"
        assert post_json(f"{url}/api/classes", {"name": name}).status == 201
        reply = post_files(f"{url}/api/classes/{name}/images", files(drawings, c, slice(shots)))
        assert reply.status == 200, reply.body
        assert reply.json()["classes"][-1] == {"name": name, "images": shots}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def omniglot():
    with running(Session("omniglot", "cpu")) as url:
        yield url


def test_the_openapi_document_describes_every_api_route(omniglot):
    document = request(f"{omniglot}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    app = create_app(Session("omniglot"))
    api = {
        (re.sub(r":\w+}", "}", route.path), method.lower())
        for route in app.routes
        if route.path.startswith("/api/")
        for method in route.methods - {"HEAD"}
    }
    assert api == {(path, method) for path, item in document["paths"].items() for method in item}
    assert document["paths"] == PATHS


def test_page_and_its_files_are_served(omniglot):
    page = request(f"{omniglot}/")
    assert page.status == 200 and b'<script src="/static/app.js">' in page.body
    assert request(f"{omniglot}/static/app.js").status == 200
    assert request(f"{omniglot}/static/../session.py").status == 404


def test_model_describes_the_bundled_model(omniglot):
    model = request(f"{omniglot}/api/model").json()
    assert model["algorithm"] == "protonet" and model["family"] == "model-based"
    assert model["ways"] is None and model["image_size"] == 28 and not model["fixed_classes"]


def test_teach_predict_download_and_export(omniglot, drawings, tmp_path):
    teach(omniglot, drawings, classes=4)
    assert request(f"{omniglot}/api/classes").json()["adapted"] is False
    queries = [item for c in range(1, 5) for item in files(drawings, c, slice(2, 5))]
    reply = post_files(f"{omniglot}/api/predict", queries)
    assert reply.status == 200, reply.body
    result = reply.json()
    assert result["classes"] == [f"character{c:02d}" for c in range(1, 5)]
    truth = [f"character{c:02d}" for c in range(1, 5) for _ in range(3)]
    predicted = [p["predicted"] for p in result["predictions"]]
    assert sum(map(str.__eq__, predicted, truth)) >= 10, predicted
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in result["predictions"])
    assert request(f"{omniglot}/api/classes").json()["adapted"] is True

    rows = list(csv.reader(io.StringIO(request(f"{omniglot}/api/predictions.csv").body.decode())))
    assert rows[0] == ["path", "predicted", "probability", *(f"p_{n}" for n in result["classes"])]
    assert [row[:2] for row in rows[1:]] == [
        [name, p] for (name, _), p in zip(queries, predicted, strict=True)
    ]

    exported = request(f"{omniglot}/api/export?format=pt")
    assert exported.status == 200 and "fewsight-classifier.pt" in exported.headers["content-disposition"]
    (tmp_path / "c.pt").write_bytes(exported.body)
    config, classifier, names = load_exported(tmp_path / "c.pt")
    assert names == result["classes"]
    folder = tmp_path / "queries"
    folder.mkdir()
    for name, data in queries:
        (folder / name).write_bytes(data)
    with torch.no_grad():
        probabilities = classifier(load_images([folder / n for n, _ in queries], config)).softmax(-1)
    expected = torch.tensor([p["probabilities"] for p in result["predictions"]])
    torch.testing.assert_close(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_classes_can_be_removed(omniglot, drawings):
    teach(omniglot, drawings, classes=3, shots=1)
    assert request(f"{omniglot}/api/classes/character02", "DELETE").status == 200
    names = [c["name"] for c in request(f"{omniglot}/api/classes").json()["classes"]]
    assert names == ["character01", "character03"]
    assert request(f"{omniglot}/api/classes/character02", "DELETE").status == 404


def test_adapt_answers_with_its_classes(omniglot, drawings):
    assert "at least 2 classes" in request(f"{omniglot}/api/adapt", "POST").json()["error"]
    teach(omniglot, drawings, classes=2, shots=1)
    reply = request(f"{omniglot}/api/adapt", "POST").json()
    assert reply["classes"] == ["character01", "character02"] and reply["seconds"] >= 0


def test_bad_uploads_are_refused_naming_the_file(drawings):
    limits = Limits(image_bytes=100_000, request_bytes=300_000, files_per_request=4, image_pixels=250_000)
    good = files(drawings, 1, slice(1))[0][1]
    with running(Session("omniglot", limits=Limits(**{**vars(limits), "images_per_class": 3}))) as url:
        assert post_json(f"{url}/api/classes", {"name": "a"}).status == 201
        target = f"{url}/api/classes/a/images"

        def refused(uploads, status):
            reply = post_files(target, uploads)
            assert reply.status == status, reply.body
            return reply.json()["error"]

        assert "notes.txt is not an image" in refused([("notes.txt", b"hello")], 415)
        assert "broken.png is a damaged PNG" in refused([("broken.png", good[:8] + b"\0" * 50)], 400)
        assert "cut.png is not a readable image" in refused([("cut.png", good[:200])], 400)
        big = good + b"\0" * 200_000
        assert f"big.png is {len(big):,} bytes, over the limit of 100,000 bytes" in refused(
            [("big.png", big)], 413
        )
        assert "empty.png is empty (0 bytes)" in refused([("empty.png", b"")], 400)
        huge = png(Image.new("1", (1000, 1000)))  # a few hundred bytes that decode to a megapixel
        assert "huge.png is 1000x1000 pixels" in refused([("huge.png", huge)], 413)
        assert "Too many files" in refused([("x.png", good)] * 5, 400)
        assert "over the limit of 300,000 bytes" in refused(
            [(f"{i}.png", good + b"\0" * 90_000) for i in range(4)], 413
        )
        assert refused([("x.png", good)] * 4, 413) == (
            "class 'a' holds 0 images, and a class holds at most 3; send at most 3 more"
        )
        assert request(target, "POST", good, {"Content-Type": "image/png"}).status == 415
        assert post_files(target, [("ok.png", good), ("notes.txt", b"hi")]).status == 415
        assert request(f"{url}/api/classes").json()["classes"] == [{"name": "a", "images": 0}]
        assert post_files(f"{url}/api/classes/nope/images", [("x.png", good)]).status == 404


def test_bad_requests_are_refused_with_a_message(omniglot):
    assert post_json(f"{omniglot}/api/classes", {"name": "a"}).status == 201
    assert post_json(f"{omniglot}/api/classes", {"name": "a"}).status == 409
    assert post_json(f"{omniglot}/api/classes", {"name": ""}).status == 400
    assert post_json(f"{omniglot}/api/classes", ["a"]).status == 400
    not_json = request(f"{omniglot}/api/classes", "POST", b"{", {"Content-Type": "application/json"})
    assert not_json.status == 400 and "send JSON" in not_json.json()["error"]
    assert "format must be" in request(f"{omniglot}/api/export?format=zip").json()["error"]
    assert "at least 2 classes" in request(f"{omniglot}/api/export").json()["error"]
    assert post_json(f"{omniglot}/api/classes", {"name": "b"}).status == 201
    assert "class 'a' has no images yet" in request(f"{omniglot}/api/export").json()["error"]
    assert request(f"{omniglot}/api/nothing").json() == {
        "error": "there is no /api/nothing; the API is described at /openapi.json"
    }


def test_other_sites_cannot_reach_the_server(omniglot):
    reply = post_json(f"{omniglot}/api/classes", {"name": "a"}, Origin="http://example.com")
    assert reply.status == 403
    refused = request(f"{omniglot}/api/model", headers={"Host": "attacker.example"})
    assert refused.status == 400
    assert refused.json()["error"] == (
        f"this server does not answer to the host 'attacker.example'; open it as "
        f"http://localhost:{omniglot.rsplit(':', 1)[1]}/, or serve it with --allow-host NAME"
    )
    assert request(f"{omniglot}/api/model", headers={"Host": "localhost:1"}).status == 200


def test_uploads_never_touch_the_disk(omniglot, monkeypatch, tmp_path):
    """A photo over the multipart parser's 1 MB spool stays in memory: no temporary file anywhere."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    photo = png(Image.frombytes("RGB", (700, 700), torch.randint(0, 256, (700 * 700 * 3,)).byte().numpy()))
    assert len(photo) > 1024 * 1024
    assert post_json(f"{omniglot}/api/classes", {"name": "photo"}).status == 201
    assert post_files(f"{omniglot}/api/classes/photo/images", [("photo.png", photo)]).status == 200
    assert list(tmp_path.iterdir()) == []


def test_an_exported_classifier_keeps_its_classes(drawings, tmp_path):
    with running(Session("omniglot")) as url:
        teach(url, drawings, classes=3, shots=1)
        (tmp_path / "c.pt").write_bytes(request(f"{url}/api/export").body)
    with running(Session(str(tmp_path / "c.pt"))) as url:
        assert request(f"{url}/api/model").json()["fixed_classes"] is True
        names = [c["name"] for c in request(f"{url}/api/classes").json()["classes"]]
        assert names == ["character01", "character02", "character03"]
        assert post_json(f"{url}/api/classes", {"name": "new"}).status == 409
        reply = post_files(f"{url}/api/predict", files(drawings, 2, slice(3, 4)))
        assert reply.json()["predictions"][0]["predicted"] == "character02"


def test_a_maml_run_takes_exactly_its_ways_and_adapts(drawings, maml_run):
    with running(Session(str(maml_run))) as url:
        model = request(f"{url}/api/model").json()
        assert model["family"] == "maml" and model["ways"] == 3 and model["adapt_steps"] == 3
        teach(url, drawings, classes=2, shots=1)
        assert "takes exactly 3 classes" in request(f"{url}/api/adapt", "POST").json()["error"]
        assert post_json(f"{url}/api/classes", {"name": "character03"}).status == 201
        post_files(f"{url}/api/classes/character03/images", files(drawings, 3, slice(1)))
        assert request(f"{url}/api/adapt", "POST").status == 200
        reply = post_files(f"{url}/api/predict", files(drawings, 1, slice(2, 5)))
        assert reply.status == 200 and len(reply.json()["predictions"]) == 3


def test_serve_refuses_a_model_it_cannot_find(capsys):
    assert main(["serve", "no-such-model", "--port", "0"]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main(["serve", "--port", "70000"]) == 2


def test_the_bundled_miniimagenet_model_serves_colour_photos(mini_test_photos):
    """The page's API with the other bundled model: 3 unseen miniImageNet test classes of the sample,
    5 photos each, then 5 other photos of each as queries."""
    by_class = mini_test_photos
    labels = list(by_class)[:3]
    with running(Session("miniimagenet", "cpu")) as url:
        assert request(f"{url}/api/model").json()["image_size"] == 80
        for label in labels:
            assert post_json(f"{url}/api/classes", {"name": label}).status == 201
            photos = [(p.name, p.read_bytes()) for p in by_class[label][:5]]
            assert post_files(f"{url}/api/classes/{label}/images", photos).status == 200
        queries = [(p.name, p.read_bytes()) for label in labels for p in by_class[label][5:10]]
        reply = post_files(f"{url}/api/predict", queries)
    assert reply.status == 200, reply.body
    predicted = [p["predicted"] for p in reply.json()["predictions"]]
    truth = [label for label in labels for _ in range(5)]
    assert sum(map(str.__eq__, predicted, truth)) >= 7, predicted  # chance: 5 of 15


def test_connections_are_accepted_with_nagle_off():
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket's protocol
    is IPPROTO_TCP; without it each answer on a keep-alive connection waits ~40 ms (issue 30)."""
    listener = bind("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()):
        assert listener.proto == socket.IPPROTO_TCP
        connection, _ = listener.accept()
        with connection:
            assert connection.proto == socket.IPPROTO_TCP
            assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_every_class_made_can_be_filled_predicted_with_and_removed(omniglot, drawings):
    """Names that cannot be one segment of a URL path (. .. or with /) are refused when made, so a
    class that could never be filled or removed, and would block every prediction, cannot exist."""
    for name in (".", "..", "a/b", "/", " ", "x" * 65, "tab\there"):
        reply = post_json(f"{omniglot}/api/classes", {"name": name})
        assert reply.status == 400, name
        assert reply.json()["error"] == (
            'a class name is 1 to 64 printable characters, not all spaces, with no "/", and not "." or ".."'
        )
    names = ["...", ".a", "a b", "50% ?x#y", "a\\b", "ü&+=;,", "x" * 64]
    for c, name in enumerate(names, start=1):
        assert post_json(f"{omniglot}/api/classes", {"name": name}).status == 201, name
        added = post_files(
            f"{omniglot}/api/classes/{quote(name, safe='')}/images", files(drawings, c, slice(1))
        )
        assert added.status == 200, (name, added.body)
    reply = post_files(f"{omniglot}/api/predict", files(drawings, 1, slice(2, 3)))
    assert reply.status == 200 and reply.json()["classes"] == names
    for name in names:
        assert request(f"{omniglot}/api/classes/{quote(name, safe='')}", "DELETE").status == 200, name
    assert request(f"{omniglot}/api/classes").json()["classes"] == []


def test_the_images_held_and_the_last_predictions_are_served(omniglot, drawings):
    """What a reloaded page shows: each class's images as the model sees them, and the last
    predictions with their query images, marked not current once the classes change."""
    assert request(f"{omniglot}/api/predictions").json() == {
        "classes": [],
        "predictions": [],
        "adapt_seconds": 0.0,
        "current": False,
    }
    teach(omniglot, drawings, classes=2)
    image = request(f"{omniglot}/api/classes/character02/images/1")
    assert image.status == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.body)).size == (28, 28)
    missing = request(f"{omniglot}/api/classes/character02/images/2")
    assert missing.status == 404 and missing.json()["error"] == "class 'character02' has 2 images; no image 2"
    predicted = post_files(f"{omniglot}/api/predict", files(drawings, 2, slice(2, 5))).json()
    assert predicted["current"] is True
    assert request(f"{omniglot}/api/predictions").json() == predicted
    query = request(f"{omniglot}/api/predictions/2")
    assert query.status == 200 and Image.open(io.BytesIO(query.body)).mode == "L"
    assert request(f"{omniglot}/api/predictions/3").status == 404
    assert post_json(f"{omniglot}/api/classes", {"name": "new"}).status == 201
    assert request(f"{omniglot}/api/predictions").json() == {**predicted, "current": False}


def test_sizes_are_reported_exactly_and_an_image_at_the_limit_is_taken(drawings):
    good = files(drawings, 1, slice(1))[0][1]
    with running(Session("omniglot", limits=Limits(image_bytes=len(good) + 10))) as url:
        assert post_json(f"{url}/api/classes", {"name": "a"}).status == 201
        at_limit = post_files(f"{url}/api/classes/a/images", [("at.png", good + b"\0" * 10)])
        assert at_limit.status == 200, at_limit.body
        over = post_files(f"{url}/api/classes/a/images", [("over.png", good + b"\0" * 11)])
        assert over.status == 413
        assert over.json()["error"] == (
            f"over.png is {len(good) + 11:,} bytes, over the limit of {len(good) + 10:,} bytes an image; "
            "shrink it or choose another"
        )


def test_the_openapi_document_labels_each_error_with_its_meaning(omniglot):
    document = request(f"{omniglot}/openapi.json").json()
    meanings = {"400": "Bad request", "403": "Forbidden", "404": "Not found", "409": "Conflict"}
    meanings |= {"413": "Too large", "415": "Unsupported media type"}
    labelled = 0
    for item in document["paths"].values():
        for operation in item.values():
            for code, answer in operation["responses"].items():
                if code.startswith("4"):
                    assert answer["description"].startswith(meanings[code]), (code, answer)
                    labelled += 1
    assert labelled >= 15
