"""What the page has taught the model: its classes with their support images, the classifier adapted
to them (rebuilt after any change), and the last predictions. Held in memory, one per server."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fewsight.run.build import channels
from fewsight.run.config import MODEL_BASED
from fewsight.serve.uploads import Limits, UploadError, decode_upload
from fewsight.use.export import classifier_bytes, load_exported
from fewsight.use.models import load_model, max_ways
from fewsight.use.predict import Prediction, classify, model_input, write_csv


@dataclass
class Adapted:
    """A classifier for the session's classes as they were at `version`, and how long adapting took."""

    classifier: nn.Module
    names: list[str]
    seconds: float
    version: int = 0


@dataclass
class Predicted:
    """The last predictions, the query images as the model saw them, and the classifier's version."""

    predictions: list[Prediction]
    images: torch.Tensor
    adapted: Adapted


def png(image: torch.Tensor) -> bytes:
    """A uint8 (channels, height, width) image as PNG bytes."""
    array = image.numpy()
    buffer = io.BytesIO()
    if array.shape[0] == 1:
        Image.fromarray(array[0], "L").save(buffer, format="PNG")
    else:
        Image.fromarray(array.transpose(1, 2, 0), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class Session:
    """A model (run folder, bundled name or exported file) and the classes taught to it.

    An exported classifier comes with its classes, which cannot be changed; a run folder or bundled
    model learns whatever classes the page makes. Every method is safe to call from several threads.
    """

    def __init__(self, model: str, device: torch.device | str = "cpu", limits: Limits | None = None) -> None:
        self.model, self.device, self.limits = str(model), torch.device(device), limits or Limits()
        self.classes: dict[str, list[torch.Tensor]] = {}
        self._last: Predicted | None = None
        self._lock = threading.Lock()
        self._version = 0  # counts the changes of classes
        self._adapted: Adapted | None = None
        if Path(model).is_file():
            self.config, classifier, names = load_exported(Path(model), self.device)
            self.learner = None
            self._adapted = Adapted(classifier, names, 0.0)
        else:
            self.config, self.learner = load_model(model, self.device)

    @property
    def fixed(self) -> bool:
        """Whether the classes are those of an exported classifier (no teaching)."""
        return self.learner is None

    def info(self) -> dict:
        """The model's description for the page: family, image form, class count it takes."""
        config = self.config
        return {
            "model": Path(self.model).name,
            "algorithm": config.algorithm,
            "family": "model-based" if config.algorithm in MODEL_BASED else "maml",
            "adapt_steps": 0 if config.algorithm in MODEL_BASED else config.eval_inner_steps,
            "ways": max_ways(config),
            "image_size": config.image_size,
            "channels": channels(config),
            "fixed_classes": self.fixed,
            "limits": vars(self.limits),
        }

    def state(self) -> dict:
        """The classes with their image counts, and whether the classifier is adapted to them."""
        with self._lock:
            if self.fixed:
                classes = [{"name": n, "images": 0} for n in self._adapted.names]
            else:
                classes = [{"name": n, "images": len(images)} for n, images in self.classes.items()]
            return {"classes": classes, "adapted": self._adapted is not None}

    def add_class(self, name: object) -> None:
        """A new empty class. Its name must fit in a URL path segment (no /, not . or ..), so that
        every class made can be filled, removed and predicted with."""
        self._teachable()
        if not valid_name(name):
            raise UploadError(
                'a class name is 1 to 64 printable characters, not all spaces, with no "/", '
                'and not "." or ".."'
            )
        with self._lock:
            if name in self.classes:
                raise UploadError(f"there is already a class {name!r}; pick another name", 409)
            if len(self.classes) >= self.limits.classes:
                raise UploadError(f"at most {self.limits.classes} classes; remove one first", 413)
            self.classes[name] = []
            self._changed()

    def remove_class(self, name: str) -> None:
        """Forget a class and its images."""
        self._teachable()
        with self._lock:
            self._known(name)
            del self.classes[name]
            self._changed()

    def add_images(self, name: str, files: list[tuple[str, bytes]]) -> int:
        """Decode and add support images to a class (all or none); returns the class's image count."""
        self._teachable()
        with self._lock:
            self._room(name, len(files))
        images = self._decode(files)  # outside the lock: decoding many photos takes a while
        with self._lock:
            self._room(name, len(files))
            self.classes[name] += list(images)
            self._changed()
            return len(self.classes[name])

    def image(self, name: str, index: int) -> bytes:
        """Support image `index` of class `name` as PNG, as the model sees it (its size and colour)."""
        with self._lock:
            self._known(name)
            if not 0 <= index < len(self.classes[name]):
                raise UploadError(
                    f"class {name!r} has {len(self.classes[name])} images; no image {index}", 404
                )
            return png(self.classes[name][index])

    def adapt(self) -> Adapted:
        """The classifier for the current classes, adapted now unless it already is."""
        with self._lock:
            if self._adapted is None:
                self._adapted = self._adapt()
            return self._adapted

    def predict(self, files: list[tuple[str, bytes]]) -> tuple[Predicted, bool]:
        """Predicted class and probabilities of each query image (all in one batch), with the
        classifier that predicted them; and whether the classes are still those it was adapted to
        (another request may have changed them meanwhile)."""
        images = self._decode(files)
        adapted = self.adapt()
        x = model_input(images, self.config).to(self.device)
        predictions = classify(adapted.classifier, x, [name for name, _ in files], adapted.names)
        with self._lock:
            self._last = Predicted(predictions, images, adapted)
            return self._last, adapted.version == self._version

    def last(self) -> tuple[Predicted | None, bool]:
        """The last predictions (None before any), and whether the classes are still those they
        were predicted among."""
        with self._lock:
            last = self._last
            return last, last is not None and last.adapted.version == self._version

    def query_image(self, index: int) -> bytes:
        """Query image `index` of the last predictions as PNG, as the model saw it."""
        last, _ = self.last()
        count = 0 if last is None else len(last.predictions)
        if not 0 <= index < count:
            raise UploadError(f"the last predictions have {count} images; no image {index}", 404)
        return png(last.images[index])

    def predictions_csv(self) -> str:
        """The last predictions as `fewsight predict --csv` writes them (only a header before any)."""
        last, _ = self.last()
        text = io.StringIO()
        write_csv([] if last is None else last.predictions, [] if last is None else last.adapted.names, text)
        return text.getvalue()

    def export(self, format: str) -> bytes:
        """The adapted classifier as the bytes of a `fewsight export` file (`pt` or `onnx`)."""
        adapted = self.adapt()
        return classifier_bytes(self.config, adapted.classifier, adapted.names, format)

    def _adapt(self) -> Adapted:
        names = list(self.classes)
        if len(names) < 2:
            raise UploadError("make at least 2 classes with a few images each, then predict")
        ways = max_ways(self.config)
        if ways is not None and len(names) != ways:
            raise UploadError(
                f"this {self.config.algorithm} model takes exactly {ways} classes and there are "
                f"{len(names)}; make {ways}, or serve a model-based model (e.g. omniglot) for any number"
            )
        empty = [n for n in names if not self.classes[n]]
        if empty:
            raise UploadError(f"class {empty[0]!r} has no images yet; add a few or remove it")
        support_x = model_input(torch.stack([x for n in names for x in self.classes[n]]), self.config)
        support_y = torch.tensor([label for label, n in enumerate(names) for _ in self.classes[n]])
        start = time.perf_counter()
        classifier = self.learner.adapt(support_x.to(self.device), support_y.to(self.device))
        return Adapted(classifier, names, time.perf_counter() - start, self._version)

    def _changed(self) -> None:
        """The classes changed (the caller holds the lock): the classifier must adapt again."""
        self._adapted = None
        self._version += 1

    def _decode(self, files: list[tuple[str, bytes]]) -> torch.Tensor:
        size, depth = self.config.image_size, channels(self.config)
        arrays = [decode_upload(name, data, self.limits, size, depth) for name, data in files]
        return torch.from_numpy(np.stack(arrays))

    def _teachable(self) -> None:
        if self.fixed:
            raise UploadError(
                f"{self.model} is an exported classifier with fixed classes; serve a run folder or a "
                "bundled model to teach new classes",
                409,
            )

    def _known(self, name: str) -> None:
        if name not in self.classes:
            raise UploadError(f"there is no class {name!r}; make it first", 404)

    def _room(self, name: str, count: int) -> None:
        self._known(name)
        have, most = len(self.classes[name]), self.limits.images_per_class
        if have + count > most:
            raise UploadError(
                f"class {name!r} holds {have} images, and a class holds at most {most}; "
                f"send at most {most - have} more",
                413,
            )


def valid_name(name: object) -> bool:
    """Whether `name` can name a class: 1 to 64 printable characters, not all spaces, usable as one
    segment of a URL path (no /, not . or .., which URLs resolve away)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and name.isprintable()
        and bool(name.strip())
        and "/" not in name
        and name not in (".", "..")
    )
