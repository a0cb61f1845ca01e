"""Exact reuse of the frozen part of a network.

Fine-tuning the last n layers leaves everything before them frozen, so the input of the
first trainable block depends only on the image (and on its flip, the paper's only
augmentation). ``split_model`` cuts a model at the block that holds its first trainable
layer: the *prefix* computes that block's input, the *suffix* is the model with the prefix
blocks replaced by ``nn.Identity`` (so layer names do not change). ``FeatureCache`` stores
the prefix output of every image and of its mirror image once, on disk, and training then
runs the suffix alone. Nothing is approximated: the suffix sees the same inputs, up to the
float32 rounding by which a convolution's result can depend on how many images share a batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lance.errors import LanceError

__all__ = ["blocks", "split_model", "FeatureCache", "Split"]


def blocks(model: nn.Module) -> list[str]:
    """Names of the model's blocks in forward order: the units a cut can fall between."""
    if all(hasattr(model, a) for a in ("conv1", "layer1", "layer4", "fc")):  # torchvision ResNet
        names = ["conv1", "bn1", "relu", "maxpool"]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            names += [f"{stage}.{i}" for i in range(len(getattr(model, stage)))]
        return names
    if hasattr(model, "first_conv") and hasattr(model, "blocks"):  # MCUNet / ProxylessNAS
        names = ["first_conv"] + [f"blocks.{i}" for i in range(len(model.blocks))]
        if getattr(model, "feature_mix_layer", None) is not None:
            names.append("feature_mix_layer")
        return names
    if isinstance(getattr(model, "features", None), nn.Sequential):  # torchvision MobileNetV2
        return [f"features.{i}" for i in range(len(model.features))]
    raise LanceError(f"don't know how to cut a {type(model).__name__} into blocks; the feature cache supports "
                     "torchvision ResNets, MobileNetV2 and MCUNet. Train without the cache (cache=False).")


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class _Stop(Exception):
    pass


@dataclass
class Split:
    """A model cut before block ``cut``: ``prefix(x)`` gives that block's input; ``suffix`` is the
    rest (the original model with the blocks before ``cut`` replaced by ``nn.Identity``)."""

    cut: str
    prefix: Callable[[Tensor], Tensor]
    suffix: nn.Module


def split_model(model: nn.Module, first_trainable: str) -> Split:
    """Cut ``model`` before the block that contains ``first_trainable`` (the earliest trainable
    module in forward order). The suffix is a deep copy; the prefix runs the original model up to
    the cut, in eval mode, without gradients."""
    names = blocks(model)
    owner = [b for b in names if first_trainable == b or first_trainable.startswith(b + ".")]
    if not owner:
        raise LanceError(f"{first_trainable!r} is in none of the blocks {names[:3]}...{names[-2:]}; "
                         "the trainable layers must lie inside the model's blocks.")
    cut = owner[0]
    cut_module = model.get_submodule(cut)
    captured: dict[str, Tensor] = {}

    def hook(_m, args):
        captured["x"] = args[0]
        raise _Stop

    def prefix(x: Tensor) -> Tensor:
        handle = cut_module.register_forward_pre_hook(hook)
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
            model.train(was_training)
        return captured.pop("x")

    suffix = copy.deepcopy(model)
    for b in names[: names.index(cut)]:
        _replace(suffix, b, nn.Identity())
    if getattr(suffix, "input_scale", None) is not None:  # MCUNet's input conversion belongs to the prefix
        suffix.input_scale = suffix.input_shift = None
    return Split(cut, prefix, suffix)


class FeatureCache:
    """Prefix outputs of a whole dataset split, stored once as a float32 ``.npy`` memmap.

    ``flips=True`` stores, for every image, the output for the image and for its horizontal
    mirror (shape ``(N, 2, ...)``); training picks one of the two per sample and epoch, which is
    exactly the paper's random-flip augmentation. Building is resumable: progress is recorded
    after every chunk, and an interrupted build continues where it stopped.
    """

    def __init__(self, root: str | os.PathLike, key: dict, n: int, flips: bool):
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / digest
        self.n, self.flips = n, flips
        self.meta_path = self.dir / "meta.json"
        self.data_path = self.dir / "features.npy"

    def _meta(self) -> dict:
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text())
            except (OSError, ValueError):
                meta = None
            if not isinstance(meta, dict):
                raise LanceError(f"the feature cache's {self.meta_path} is damaged; delete {self.dir} (it is "
                                 "built again) or pass another --cache-dir.")
            return meta
        return {}

    def _write_meta(self, meta: dict) -> None:
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.meta_path)

    @property
    def complete(self) -> bool:
        meta = self._meta()
        return meta.get("done") == self.n and self.data_path.exists()

    def build(self, images: Callable[[Sequence[int]], Tensor], prefix: Callable[[Tensor], Tensor],
              batch_size: int = 128, progress: bool = True) -> None:
        """Fill the cache. ``images(indices)`` returns the (normalised) input batch for those
        samples; the mirror image is ``flip(-1)`` of it."""
        from lance.experiments.locks import wait_and_claim

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.complete:
            return
        # one builder at a time: a second process (a parallel sweep) waits, then finds it complete
        lock = wait_and_claim(self.dir / "build.lock", log=print if progress else None)
        try:
            self._fill(images, prefix, batch_size, progress)
        finally:
            lock.unlink(missing_ok=True)

    def _fill(self, images, prefix, batch_size: int, progress: bool) -> None:
        meta = self._meta()
        done = meta.get("done", 0) if self.data_path.exists() else 0
        if done == self.n:
            return
        probe = prefix(images([0]))
        shape = (self.n, 2, *probe.shape[1:]) if self.flips else (self.n, *probe.shape[1:])
        mode = "r+" if done else "w+"
        arr = np.lib.format.open_memmap(self.data_path, mode=mode, dtype=np.float32, shape=shape)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.n, initial=done, desc=f"caching {self.key.get('split', '')}", leave=False)
        for start in range(done, self.n, batch_size):
            idx = list(range(start, min(start + batch_size, self.n)))
            x = images(idx)
            out = prefix(x).numpy()
            if self.flips:
                arr[start: start + len(idx), 0] = out
                arr[start: start + len(idx), 1] = prefix(x.flip(-1)).numpy()
            else:
                arr[start: start + len(idx)] = out
            arr.flush()
            self._write_meta({"key": self.key, "done": start + len(idx), "shape": list(shape)})
            if bar:
                bar.update(len(idx))
        if bar:
            bar.close()
        del arr

    def load(self) -> np.ndarray:
        if not self.complete:
            raise LanceError(f"the feature cache in {self.dir} is incomplete; build it first.")
        try:
            features = np.load(self.data_path, mmap_mode="r")  # allow_pickle stays False: no objects are read
        except (OSError, ValueError) as err:
            raise LanceError(f"the feature cache {self.data_path} is damaged ({str(err).splitlines()[0][:80]}); "
                             f"delete {self.dir} (it is built again) or pass another --cache-dir.") from None
        if features.dtype != np.float32 or len(features) != self.n or (self.flips and features.shape[1] != 2):
            raise LanceError(f"the feature cache {self.data_path} holds {features.dtype} {features.shape}, not the "
                             f"{self.n} float32 samples its key names; delete {self.dir} (it is built again).")
        return features

    def batch(self, features: np.ndarray, indices: Sequence[int], flips: Optional[Sequence[int]] = None) -> Tensor:
        """The cached inputs of the suffix for ``indices`` (with flip choice 0/1 per sample)."""
        idx = np.asarray(indices)
        if self.flips:
            f = np.zeros(len(idx), dtype=np.int64) if flips is None else np.asarray(flips)
            return torch.from_numpy(np.ascontiguousarray(features[idx, f]))
        return torch.from_numpy(np.ascontiguousarray(features[idx]))
