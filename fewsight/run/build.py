"""What a run's config builds: its data splits, its backbone and its learner."""

from __future__ import annotations

import os
from pathlib import Path

from fewsight.algorithms import MetaLearner
from fewsight.data import LabelledImages, load_omniglot
from fewsight.data.folder import labelled_files, load_image_files, split_classes
from fewsight.data.miniimagenet import load_miniimagenet
from fewsight.nets import Conv4, ResNet12
from fewsight.nets.init import fixed_scales, uniform_scales, xavier_weights
from fewsight.nets.inputs import input_norm
from fewsight.run.algorithms import REGISTRY
from fewsight.run.config import CHANNELS, DATASETS, MODEL_BASED, RESNET12_WIDTHS, RunConfig


def channels(config: RunConfig) -> int:
    """Image channels the run's model takes."""
    return CHANNELS.get(config.dataset, 3)


def assign_classes(config: RunConfig) -> None:
    """Split a user's own data set's classes into train, val and test, once, into the config."""
    if config.dataset not in DATASETS and config.class_split is None:
        names = [label for _, label in labelled_files(Path(config.dataset))]
        config.class_split = split_classes(names, config.seed)


def load_split(
    config: RunConfig, split: str, data_root: str | os.PathLike | None = None, progress: bool = True
) -> LabelledImages:
    """The labelled images of one split of the run's data set ("trainval": train and val classes);
    decoded with a progress bar the first time, unless `progress` is False."""
    if config.dataset == "omniglot":
        return load_omniglot(split, config.protocol, config.image_size, data_root, progress)
    if split == "trainval":
        parts = [load_split(config, part, data_root, progress) for part in ("train", "val")]
        return parts[0].concat(parts[1])
    if config.dataset == "miniimagenet":
        return load_miniimagenet(split, config.image_size, data_root, progress)
    assign_classes(config)
    return load_image_files(Path(config.dataset), config.class_split[split], config.image_size, 3, progress)


def build_backbone(config: RunConfig, ways: int | None) -> Conv4 | ResNet12:
    """The run's backbone, with a linear head over `ways` classes (None: features only)."""
    if config.backbone in RESNET12_WIDTHS:
        widths = RESNET12_WIDTHS[config.backbone]
        backbone: Conv4 | ResNet12 = ResNet12(ways, channels(config), config.width, config.drop_rate, widths)
    else:
        hidden = _conv4_channels(config)
        backbone = Conv4(ways, in_channels=channels(config), hidden=hidden, image_size=config.image_size)
    backbone.input_norm = input_norm(config.input_norm)
    if config.weight_init == "xavier":
        xavier_weights(backbone)
    if config.norm_scale_init == "uniform":
        uniform_scales(backbone)
    elif config.norm_scale_init == "fixed":
        fixed_scales(backbone)
    return backbone


def _conv4_channels(config: RunConfig) -> int:
    """64 channels, except for the MAML family on large images (32, as in the MAML paper); x width."""
    hidden = 64 if config.image_size <= 32 or config.algorithm in MODEL_BASED else 32
    return max(1, round(config.width * hidden))


def task_encoder(config: RunConfig) -> Conv4:
    """The small Conv4 that encodes a task for the hypernetwork: half the backbone's channels."""
    return Conv4(
        None, in_channels=channels(config), hidden=_conv4_channels(config) // 2, image_size=config.image_size
    )


def build_learner(config: RunConfig) -> MetaLearner:
    """A freshly initialised learner for the run's algorithm (its row of run/algorithms.py) and backbone."""
    backbone = build_backbone(config, None if config.algorithm in MODEL_BASED else config.ways)
    return REGISTRY[config.algorithm].build(config, backbone)
