"""Where a run computes: ``--device auto|cpu|cuda|cuda:N``.

:func:`resolve_device` turns the name into a :class:`torch.device` before any data is loaded,
and refuses a device this machine does not have with a one-line message. :func:`device_name`
is what provenance records (the GPU's model, or the CPU's).
"""

from __future__ import annotations

import re

import torch

from lance.errors import LanceError

__all__ = ["resolve_device", "device_name", "synchronize", "DEVICE_HELP"]

DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "cpu") -> torch.device:
    if isinstance(name, torch.device):
        name = str(name)
    name = "cpu" if name is None else str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise LanceError(f"unknown device {name!r}; choose {DEVICE_HELP}.")
    if not torch.cuda.is_available():
        raise LanceError(f"device {name!r} asked for, but this machine has no CUDA GPU that torch can use "
                         "(torch.cuda.is_available() is False); use --device cpu or auto.")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise LanceError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1}).")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """The hardware a run used, for its provenance."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
