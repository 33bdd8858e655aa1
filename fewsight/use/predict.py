"""Classify a user's images: a support folder (one subfolder of a few images per class) and queries."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from fewsight.data.decode import decode_image
from fewsight.errors import FewsightError
from fewsight.nets.layout import for_convolution
from fewsight.run.build import channels
from fewsight.run.config import RunConfig
from fewsight.use.export import load_exported
from fewsight.use.models import load_model, max_ways


@dataclass
class Prediction:
    """One query's predicted class, its probability, and all class probabilities."""

    path: Path | str
    predicted: str
    probability: float
    probabilities: list[float]


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def load_images(paths: list[Path], config: RunConfig) -> torch.Tensor:
    """Image files as the model expects them (see `model_input`)."""
    size, depth = config.image_size, channels(config)
    return model_input(torch.stack([torch.from_numpy(decode_image(p, size, depth)) for p in paths]), config)


def model_input(images: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """Decoded uint8 images (B, C, size, size) as the model expects them: floats in [0, 1], in the
    data set's form, channels-last (the layout its convolutions run fastest in: fewsight.nets.layout).
    Omniglot models see bright strokes on a dark background, so pen on paper is inverted.
    """
    if config.dataset == "omniglot":
        images = 255 - images
    return for_convolution(images.to(torch.get_default_dtype()) / 255)


def read_support(
    folder: Path, config: RunConfig, max_ways: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Support images (S, C, H, W), labels (S,) and class names from one subfolder per class."""
    if not folder.is_dir():
        raise FewsightError(f"--support {folder} is not a folder; make one subfolder per class inside it")
    classes = [p for p in _visible(folder) if p.is_dir()]
    if len(classes) < 2:
        raise FewsightError(f"{folder} must hold at least 2 class subfolders, found {len(classes)}")
    if max_ways is not None and len(classes) != max_ways:
        raise FewsightError(
            f"this model takes exactly {max_ways} classes and {folder} has {len(classes)}; "
            "use as many class folders, or a model-based model (e.g. the bundled omniglot) for any number"
        )
    paths, labels = [], []
    for label, class_folder in enumerate(classes):
        files = [p for p in _visible(class_folder) if p.is_file()]
        if not files:
            raise FewsightError(f"class folder {class_folder} holds no images; add a few or remove it")
        paths += files
        labels += [label] * len(files)
    return load_images(paths, config), torch.tensor(labels), [c.name for c in classes]


def query_paths(queries: list[Path]) -> list[Path]:
    """Query files: each path given, or the files inside each folder given."""
    found = []
    for query in queries:
        if query.is_dir():
            found += [p for p in _visible(query) if p.is_file()]
        elif query.is_file():
            found.append(query)
        else:
            raise FewsightError(f"query {query} does not exist")
    if not found:
        raise FewsightError("no query images found in the paths given")
    return found


def classify(
    classifier: torch.nn.Module, images: torch.Tensor, labels: list[Path | str], names: list[str]
) -> list[Prediction]:
    """Predicted class and probabilities of model-ready images (B, C, H, W), labelled by `labels`."""
    with torch.no_grad():
        probabilities = classifier(images).softmax(-1).tolist()
    results = []
    for label, row in zip(labels, probabilities, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        results.append(Prediction(label, names[best], row[best], row))
    return results


def adapted_classifier(
    model: str | Path, support: Path | None, device: torch.device | str = "cpu"
) -> tuple[RunConfig, torch.nn.Module, list[str]]:
    """Config, classifier and class names: those of a file written by fewsight export, or a model (run
    folder or bundled name) adapted to `support`, a folder of one subfolder of a few images per class."""
    if Path(model).is_file():
        exported = load_exported(Path(model), device)  # says what the file is if not an exported one
        if support is not None:
            raise FewsightError(f"{model} is an exported classifier with its classes; drop --support")
        return exported
    if support is None:
        raise FewsightError("pass --support DIR: one subfolder of a few images per class")
    config, learner = load_model(model, device)
    support_x, support_y, names = read_support(support, config, max_ways(config))
    return config, learner.adapt(support_x.to(device), support_y.to(device)), names


def predict(
    classifier: torch.nn.Module, paths: list[Path], config: RunConfig, names: list[str], batch: int = 256
) -> list[Prediction]:
    """Predicted class and probabilities of every query image."""
    results = []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        results += classify(classifier, load_images(chunk, config), chunk, names)
    return results


def write_csv(predictions: list[Prediction], names: list[str], handle: TextIO) -> None:
    """Predictions as CSV: path, predicted class, its probability, then every class's probability."""
    writer = csv.writer(handle)
    writer.writerow(["path", "predicted", "probability", *(f"p_{n}" for n in names)])
    for p in predictions:
        writer.writerow([p.path, p.predicted, f"{p.probability:.4f}", *(f"{v:.4f}" for v in p.probabilities)])
