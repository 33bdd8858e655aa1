"""fewsight: few-shot visual recognition by meta-learning, vectorised over tasks with torch.func."""

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
from fewsight.data import EpisodeSampler, LabelledImages, TaskBatch, load_miniimagenet, load_omniglot
from fewsight.errors import FewsightError
from fewsight.nets import Conv4, ResNet12, TaskBatchNorm
from fewsight.training.evaluate import Accuracy, evaluate

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
    "evaluate",
    "load_miniimagenet",
    "load_omniglot",
]
