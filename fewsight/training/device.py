"""The device and precision a run trains and evaluates with."""

from __future__ import annotations

import contextlib
import os

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


def describe(device: torch.device, doing: str) -> str:
    """One line on where `doing` runs: the GPU by name, or the CPU and its cores (and a GPU left idle)."""
    if device.type == "cuda":
        return f"{doing} on the GPU {device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    cores = f"{os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''}"
    if torch.cuda.is_available():
        return f"{doing} on the CPU ({cores}); a GPU is here: --device cuda uses it"
    return f"{doing} on the CPU ({cores}; no GPU found)"
