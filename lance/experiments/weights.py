"""The weights a run starts from: ImageNet's (the model zoo's files) or a state_dict that
``python -m lance pretrain`` wrote (the paper's split-class protocol), with a new head.

Fine-tuning and the benchmark both build their network here, so that a weights file is checked
(its shapes against the model, read with ``weights_only=True``) and described (its size and
sha256, which ties a run to its pretraining record) in one way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from lance.core.selection import head_name
from lance.errors import LanceError
from lance.experiments.checkpoints import safe_load

__all__ = ["check_pretrained", "build_pretrained"]


def check_pretrained(name: str, value) -> None:
    """A config check: 'imagenet' or the path of a state_dict file (its existence is checked when
    the model is built, so that a config can name a file still to be written)."""
    if not isinstance(value, str) or not value:
        raise LanceError(f"{name} must be 'imagenet' or the path of a state_dict file, got {value!r}.")


def _head_free_state(path: Path, model: nn.Module, model_name: str) -> dict:
    """The tensors of the state_dict at ``path`` without the head's, after checking that they fit ``model``."""
    if not path.is_file():
        raise LanceError(f"pretrained checkpoint {path} not found; write it with `python -m lance "
                         "pretrain` (`python -m lance plan` lists the command), or pass 'imagenet' or "
                         "another state_dict file.")
    state = safe_load(path, "pretrained weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LanceError(f"{path} is not a state_dict (a dict of tensors); pass the .pt file that "
                         "`python -m lance pretrain` wrote.")
    head = head_name(model)
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith(head + ".")]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise LanceError(f"weights file {path} does not fit {model_name} (other shapes {wrong[:2]}, missing "
                         f"{missing[:2]}, unexpected {unexpected[:2]}); pass weights of this model.")
    return state


def build_pretrained(model_name: str, pretrained: str, num_classes: int, weights_dir=None) -> tuple[nn.Module, str]:
    """``model_name`` with ``num_classes`` outputs, its body from ``pretrained`` ('imagenet': the
    zoo's ImageNet file in ``weights_dir``, or torchvision's download; otherwise a state_dict
    file, whose head is left out). Returns the model and a description of where its weights came
    from. The new head is initialised from torch's current random state."""
    from lance.models import zoo as models

    if pretrained == "imagenet":
        model = models.build(model_name, num_classes=num_classes, pretrained=True, weights_dir=weights_dir)
        return model, str(models.weights_file(model_name, weights_dir) or "torchvision download")
    path = Path(pretrained)
    model = models.build(model_name, num_classes=num_classes, pretrained=False, weights_dir=weights_dir)
    model.load_state_dict(_head_free_state(path, model, model_name), strict=False)
    # the digest ties the run to its pretraining record (data/results/pretrain, metrics.weights_sha256)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return model, f"{path} ({path.stat().st_size} bytes, sha256 {digest})"
