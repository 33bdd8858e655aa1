"""Data: archives and their splits, labelled image tensors, and the episode sampler."""

from fewsight.data.episodes import EpisodeSampler, TaskBatch
from fewsight.data.images import LabelledImages
from fewsight.data.miniimagenet import load_miniimagenet
from fewsight.data.omniglot import load_omniglot

__all__ = ["EpisodeSampler", "LabelledImages", "TaskBatch", "load_miniimagenet", "load_omniglot"]
