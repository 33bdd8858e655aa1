"""Meta-learning algorithms, one per file, all with the `MetaLearner` interface.

Optimisation-based (adapt by gradient steps): MAML, first-order MAML, MetaSGD, ANIL, Reptile.
Model-based (predict the task's parameters): ProtoNet, WeightPrediction, TaskHypernetwork, LEO.
"""

from fewsight.algorithms.anil import ANIL
from fewsight.algorithms.base import MetaLearner, MetaLoss
from fewsight.algorithms.hypernetwork import TaskHypernetwork
from fewsight.algorithms.leo import LEO
from fewsight.algorithms.maml import MAML, AdaptedClassifier
from fewsight.algorithms.metasgd import MetaSGD
from fewsight.algorithms.predictor import ParameterPredictor, PredictedClassifier, class_means
from fewsight.algorithms.protonet import ProtoNet
from fewsight.algorithms.reptile import Reptile
from fewsight.algorithms.weight_prediction import WeightPrediction

__all__ = [
    "ANIL",
    "LEO",
    "MAML",
    "AdaptedClassifier",
    "MetaLearner",
    "MetaLoss",
    "MetaSGD",
    "ParameterPredictor",
    "PredictedClassifier",
    "ProtoNet",
    "Reptile",
    "TaskHypernetwork",
    "WeightPrediction",
    "class_means",
]
