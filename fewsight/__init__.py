"""fewsight: few-shot visual recognition by meta-learning, vectorised over tasks with torch.func."""

from fewsight.algorithms import ANIL, MAML, AdaptedClassifier, MetaLearner, MetaLoss, MetaSGD
from fewsight.data import EpisodeSampler, LabelledImages, TaskBatch, load_omniglot
from fewsight.errors import FewsightError
from fewsight.evaluate import Accuracy, evaluate
from fewsight.nets import Conv4, TaskBatchNorm

__all__ = [
    "ANIL",
    "MAML",
    "Accuracy",
    "AdaptedClassifier",
    "Conv4",
    "EpisodeSampler",
    "FewsightError",
    "LabelledImages",
    "MetaLearner",
    "MetaLoss",
    "MetaSGD",
    "TaskBatch",
    "TaskBatchNorm",
    "evaluate",
    "load_omniglot",
]
