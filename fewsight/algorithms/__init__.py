"""Meta-learning algorithms, one per file, all with the `MetaLearner` interface."""

from fewsight.algorithms.anil import ANIL
from fewsight.algorithms.base import MetaLearner, MetaLoss
from fewsight.algorithms.maml import MAML, AdaptedClassifier
from fewsight.algorithms.metasgd import MetaSGD

__all__ = ["ANIL", "MAML", "AdaptedClassifier", "MetaLearner", "MetaLoss", "MetaSGD"]
