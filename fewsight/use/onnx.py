"""An adapted classifier as an ONNX model, for ONNX Runtime and the runtimes that import ONNX.

The model maps `images`, floats (B, C, H, W) in [0, 1] already in the model's form (resized to the
run's image size; Omniglot inverted: bright strokes on black; see `fewsight.use.predict.model_input`),
to `logits` (B, N). The adapted weights (MAML family) or the predicted head (model-based family)
are constants of the graph, and so are the support images whose statistics normalise queries in
non-transductive mode; the class names are in the model's metadata (`class_names`, JSON).
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import torch
from torch import nn

from fewsight.algorithms import AdaptedClassifier
from fewsight.errors import FewsightError
from fewsight.nets.batchnorm import with_context
from fewsight.run.build import channels
from fewsight.run.config import RunConfig

OPSET = 17


class PlainNetwork(nn.Module):
    """A MAML-family classifier as an ordinary network that holds its adapted weights, which torch's
    tracer can follow (it cannot follow `functional_call`)."""

    def __init__(self, classifier: AdaptedClassifier) -> None:
        super().__init__()
        self.model = copy.deepcopy(classifier.learner.model)
        self.model.load_state_dict(classifier.params, strict=False)
        self.context = None if classifier.learner.transductive else classifier.support_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_context(self.model, x, self.context)


def onnx_bytes(classifier: nn.Module, config: RunConfig, class_names: list[str]) -> bytes:
    """The classifier (from a learner's `adapt`) as a serialised ONNX model with a dynamic batch size.

    torch's TorchScript-based exporter (`dynamo=False`) is used: it needs no package beyond `onnx`,
    which the torch.export-based one (onnxscript) does.
    """
    try:
        import onnx
    except ImportError as error:
        raise FewsightError("ONNX export needs the onnx package: pip install 'fewsight[onnx]'") from error
    if isinstance(classifier, AdaptedClassifier):
        classifier = PlainNetwork(classifier)
    device = next(iter(classifier.parameters())).device
    example = torch.zeros(2, channels(config), config.image_size, config.image_size, device=device)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            classifier,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    _unshare_initializers(model.graph)
    onnx.helper.set_model_props(
        model,
        {
            "class_names": json.dumps(class_names),
            "algorithm": config.algorithm,
            "input": f"float32 (B, {channels(config)}, {config.image_size}, {config.image_size}) in [0, 1]"
            + (", inverted (bright strokes on black)" if config.dataset == "omniglot" else ""),
        },
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _unshare_initializers(graph) -> None:
    """Give every user of a merged initializer its own copy. The exporter merges equal initializers
    (as untrained batch-norm scales) through Identity nodes, which ONNX Runtime's optimiser mishandles."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    for node in aliases:
        copy = graph.initializer.add()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        graph.node.remove(node)
