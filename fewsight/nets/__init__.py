"""Backbones usable functionally (torch.func.functional_call) with per-task batch statistics."""

from fewsight.nets.batchnorm import TaskBatchNorm, replace_batchnorm, with_context
from fewsight.nets.conv import SameConv2d, same_conv2d
from fewsight.nets.conv4 import Conv4
from fewsight.nets.resnet12 import ResNet12

__all__ = [
    "Conv4",
    "ResNet12",
    "SameConv2d",
    "TaskBatchNorm",
    "replace_batchnorm",
    "same_conv2d",
    "with_context",
]
