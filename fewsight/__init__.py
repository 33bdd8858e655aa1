"""fewsight: few-shot visual recognition by meta-learning, vectorised over tasks with torch.func."""

from importlib.metadata import PackageNotFoundError, version

from fewsight.algorithms import (
    ANIL,
    LEO,
    MAML,
    AdaptedClassifier,
    MetaLearner,
    MetaLoss,
    MetaSGD,
    ParameterPredictor,
    PredictedClassifier,
    ProtoNet,
    Reptile,
    TaskHypernetwork,
    WeightPrediction,
)
from fewsight.algorithms.selfcheck import check_meta_gradient
from fewsight.data import EpisodeSampler, LabelledImages, TaskBatch, load_miniimagenet, load_omniglot
from fewsight.errors import FewsightError
from fewsight.nets import Conv4, ResNet12, TaskBatchNorm, replace_batchnorm
from fewsight.training.evaluate import Accuracy, evaluate

try:
    __version__ = version("fewsight")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ANIL",
    "LEO",
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
    "ParameterPredictor",
    "PredictedClassifier",
    "ProtoNet",
    "Reptile",
    "ResNet12",
    "TaskBatch",
    "TaskBatchNorm",
    "TaskHypernetwork",
    "WeightPrediction",
    "__version__",
    "check_meta_gradient",
    "evaluate",
    "load_miniimagenet",
    "load_omniglot",
    "replace_batchnorm",
]
