"""The device and precision a run trains and evaluates with."""

from __future__ import annotations

import contextlib

import torch

from fewsight.errors import FewsightError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when `enabled` (a FewsightError on a GPU without bf16), else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FewsightError("this GPU has no bf16 support; drop --bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)  # graph-safe
