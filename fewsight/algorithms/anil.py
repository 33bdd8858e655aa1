"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the head; the body is meta-learned
as a fixed feature extractor."""

from __future__ import annotations

from torch import nn

from fewsight.algorithms.maml import MAML


def head_parameter_names(model: nn.Module, head: str | None = None) -> list[str]:
    """Names of the head's parameters: the submodule `head`, else the last one with parameters."""
    if head is None:
        owners = [
            name
            for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False))
        ]
        head = owners[-1]
    prefix = f"{head}." if head else ""
    return [name for name, _ in model.named_parameters() if name.startswith(prefix)]


class ANIL(MAML):
    """MAML that adapts only the parameters of `head` (default: the model's last layer with
    parameters). Takes the same arguments as MAML otherwise."""

    def __init__(self, model: nn.Module, head: str | None = None, **kwargs) -> None:
        super().__init__(model, adapted=head_parameter_names(model, head), **kwargs)
