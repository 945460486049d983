"""Where tensors run: the device a job or replica asked for, and torch's CPU threads for its
share of a machine. One answer for the jobs, the Train workers and the Serve replicas."""

from __future__ import annotations

import math

import torch

from raygpt.errors import RaygptError

DEVICE_NAMES = "auto, cpu, cuda, cuda:1, ..."


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is the GPU when there is one, else the CPU; a GPU asked for must be there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RaygptError(f"device: {name!r} is not a device ({DEVICE_NAMES})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RaygptError(f"device: {name} was asked for, but this process sees no GPU")
    return device


def cpu_threads(cpus: float, override: int | None = None) -> int:
    """torch threads for a worker holding `cpus` logical CPUs (a fraction gets one thread)."""
    return override or max(1, math.ceil(cpus))
