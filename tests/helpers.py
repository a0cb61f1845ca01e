"""Small builders shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import lance


def single_layer_model(layer: nn.Module, dtype=torch.float64) -> nn.Sequential:
    return nn.Sequential(layer).to(dtype)


def random_batches(shape, n=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def grads_of(model: nn.Module, layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """(input grad, weight grad, bias grad or None) of ``layer`` for ``sum(model(x) * upstream)``."""
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    gs = torch.autograd.grad(y, [x] + params, upstream)
    return y.detach(), gs[0], gs[1], (gs[2] if len(gs) > 2 else None)


def calibrated_pair(layer: nn.Module, shape, energy=1.0, compress_batch=True, dtype=torch.float64):
    """A model with one plain layer, and a deep copy of it compressed with a calibration."""
    import copy

    plain = single_layer_model(layer, dtype)
    cal = lance.calibrate(plain, random_batches(shape, dtype=dtype), ["0"], energy=energy,
                          compress_batch=compress_batch)
    compressed = lance.compress(copy.deepcopy(plain), cal)
    return plain, compressed, cal


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def fake_executed_notebook(path: Path, duration: float, exception: bool = False) -> None:
    """A minimal notebook with the metadata papermill writes."""
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "papermill": {
                "start_time": "2025-01-02T03:04:05.678901",
                "end_time": "2025-01-02T03:04:17.000000",
                "duration": duration,
                "exception": exception,
                "parameters": {"profile": "smoke"},
            }
        },
        "cells": [
            {
                "cell_type": "code", "id": "c1", "metadata": {}, "source": "1 + 1",
                "execution_count": 1,
                "outputs": [{"output_type": "execute_result", "execution_count": 1,
                             "data": {"text/plain": "2"}, "metadata": {}}],
            }
        ],
    }
    path.write_text(json.dumps(nb))
