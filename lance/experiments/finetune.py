"""Single-task fine-tuning: BP, per-step HOSVD, ASI and LANCE on one trainer (paper Sec. 3.1).

``finetune(config)`` trains the last ``config.layers`` conv layers (plus the head) of a
pretrained model on a dataset with one of four methods, on the same data order, schedule and
seed, and returns (and, with ``out_dir``, writes) one result record with accuracy, ranks,
activation memory (analytic and measured), FLOPs, the gradient angle per epoch, wall time and
provenance. The frozen part's output is cached (``lance.experiments.cache``); runs resume from a
checkpoint written after every epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lance.analysis.accounting import MIB, activation_memory, measured_bytes, paper_convention_tmacs, saved_tensors
from lance.analysis.methods import METHODS, apply_method
from lance.experiments.cache import FeatureCache, split_model
from lance.core.calibration import calibrate
from lance.errors import DivergedError, LanceError
from lance.experiments.checkpoints import check_checkpoint, load_checkpoint, save_checkpoint
from lance.experiments.device import device_name, resolve_device
from lance.experiments.config import (at_most, dataset_names, finite_float, flag, fraction, model_names,
                                     non_negative, one_of, option, positive, resolution_px, seed_value, span,
                                     validate)
from lance.experiments.weights import build_pretrained, check_pretrained
from lance.analysis.fidelity import gradient_angle
from lance.core.layers import compressed_layers, exact_backward
from lance.core.selection import head_name, set_trainable, trainable_layers

__all__ = ["FinetuneConfig", "PROFILES", "finetune", "result_name", "METHODS", "image_fn"]


DEFAULT_LR = 0.05  # the paper's (Table 4)


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the paper (Table 4) and the authors' script."""

    model: str = option("mobilenet_v2", "network", one_of(model_names))
    dataset: str = option("cifar100", "dataset to fine-tune on", one_of(dataset_names))
    method: str = option("lance", "bp | hosvd | asi | lance", one_of(METHODS))
    layers: int = option(2, "the last n conv layers are trained, plus the classifier head", positive)
    energy: float = option(0.7, "LANCE's energy threshold (Eq. 3); also fixes ASI's ranks", fraction)
    hosvd_energy: float = option(0.8, "per-step HOSVD threshold (the HOSVD authors' scripts use 0.8)", fraction)
    epochs: int = option(50, "training epochs", at_most(100_000, positive))
    batch_size: int = option(128, "batch size (also the calibration batch size)", positive)
    # at most float32's range: torch's optimisers hold the rate as a float32 scalar
    lr: float = option(DEFAULT_LR, "learning rate (the paper's 0.05; 0 leaves the weights as they are)",
                       at_most(1e38, finite_float))
    optimizer: str = option("script", "script: momentum 0.9, wd 1e-4, cosine to 0.01 lr, clip 2 | table4: plain SGD",
                            one_of(("script", "table4")))
    calibration_batches: int = option(100, "Phase I batches (LANCE and ASI)", positive)
    compress_batch: bool = option(True, "project the batch mode too (the paper's choice)", flag)
    seed: int = option(42, "seed of the head, the data order and the flips", seed_value)
    flip: bool = option(True, "random horizontal flips of the training images (the paper's only augmentation)", flag)
    resolution: int = option(0, "input size in px (0: the model's native resolution)", resolution_px)
    classes: Optional[tuple[int, int]] = option(None, "fine-tune on classes [FIRST, END) only (split protocol)", span)
    pretrained: str = option("imagenet", "'imagenet' or the path of a state_dict (split-protocol pretraining)",
                             check_pretrained)
    train_limit: int = option(0, "use only this many training images (0: all); for demonstrations", non_negative)
    test_limit: int = option(0, "use only this many test images (0: all)", non_negative)
    skip_depthwise: bool = option(False, "the authors' LANCE selection: the last n convolutions with groups == 1",
                                  flag)
    # cut the cached prefix before the last max(layers, cache_cut) convs, so that runs with 2 and 4
    # layers share one cache (the frozen blocks in between run in the suffix)
    cache_cut: int = option(4, "the cached prefix ends before the last max(layers, cache_cut) convs", positive)

    def __post_init__(self):
        if isinstance(self.classes, list):
            self.classes = tuple(self.classes)
        validate(self)
        if self.method == "bp":  # BP keeps whole activations: the option means nothing for it
            self.compress_batch = True


#: the sizes of a run, by name: a full configuration each (the rest at its defaults); the command
#: line and the chapters replace the fields they are given (``dataclasses.replace``)
PROFILES: dict[str, FinetuneConfig] = {
    "smoke": FinetuneConfig(epochs=1, train_limit=512, test_limit=256, calibration_batches=2, batch_size=64),
    "book": FinetuneConfig(epochs=2, train_limit=2560, test_limit=1000, calibration_batches=10, batch_size=64),
    "paper": FinetuneConfig(),
}


def result_name(cfg: FinetuneConfig) -> str:
    """File name of a run's result (and, without ``.json``, of its checkpoint): the fields that
    distinguish runs of the paper's tables in words, and the others as a short hash, so that two
    different configurations never share a name."""
    parts = [cfg.model, cfg.dataset, cfg.method, f"L{cfg.layers}", f"e{cfg.energy:g}", f"bs{cfg.batch_size}",
             f"ep{cfg.epochs}", f"s{cfg.seed}"]
    if cfg.method == "hosvd":
        parts.insert(4, f"h{cfg.hosvd_energy:g}")
    if cfg.classes:
        parts.append(f"c{cfg.classes[0]}-{cfg.classes[1]}")
    if cfg.resolution:
        parts.append(f"r{cfg.resolution}")
    if cfg.train_limit:
        parts.append(f"n{cfg.train_limit}")
    if cfg.optimizer != "script":
        parts.append(cfg.optimizer)
    if cfg.lr != DEFAULT_LR:  # the paper's learning rate is left out of the name
        parts.append(f"lr{cfg.lr:g}")
    if cfg.calibration_batches != 100 and cfg.method in ("lance", "asi"):
        parts.append(f"cal{cfg.calibration_batches}")
    if not cfg.compress_batch and cfg.method in ("lance", "asi", "hosvd"):
        parts.append("nobatch")
    if cfg.skip_depthwise:
        parts.append("nodw")
    if not cfg.flip:
        parts.append("noflip")
    rest = _unnamed(cfg)
    if rest:  # what the readable part leaves out, as a short hash: another config never gets this name
        parts.append("x" + hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8])
    return "_".join(parts) + ".json"


def _unnamed(cfg: FinetuneConfig) -> dict:
    """The fields that differ from their defaults and that the readable name does not show
    exactly (a test limit, the pretrained weights' file name, the cache cut, a threshold that
    ``%g`` rounds)."""
    rest = {}
    if cfg.test_limit:
        rest["test_limit"] = cfg.test_limit
    if cfg.pretrained != "imagenet":
        rest["pretrained"] = Path(cfg.pretrained).name
    if cfg.cache_cut != 4:
        rest["cache_cut"] = cfg.cache_cut
    for key in ("energy", "hosvd_energy", "lr"):
        value = getattr(cfg, key)
        if float(f"{value:g}") != value:
            rest[key] = repr(value)
    return rest


# ---------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------
def _subset(imageset, limit: int, seed: int):
    if not limit or limit >= len(imageset.labels):
        return imageset
    order = torch.randperm(len(imageset.labels), generator=torch.Generator().manual_seed(seed))[:limit]
    return imageset.subset(order.sort().values)


def image_fn(imageset, resolution: int):
    """``f(indices) -> normalised float batch`` of ``imageset`` at ``resolution``, as the fine-tuning
    runs see it before their frozen part (no augmentation; flips are the cache's)."""
    from lance import data

    if isinstance(imageset.images, torch.Tensor):
        def images(idx):
            x = imageset.images[list(idx)].permute(0, 3, 1, 2).float().div(255)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if x.shape[-1] != resolution or x.shape[-2] != resolution:
                x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                  antialias=x.shape[-1] > resolution)
            return data.normalize(x)
        return images
    ds = data.ImageDataset(imageset, data.transforms(resolution, train=False))
    return lambda idx: torch.stack([ds[i][0] for i in idx])


def _angle_or_nan(approx, exact) -> float:
    """The diagnostic angle, or NaN where a gradient is zero (a run whose units have all died):
    the run goes on and its file says so, instead of the diagnostic ending the run."""
    if approx is None or not bool(approx.any()) or not bool(exact.any()):
        return float("nan")
    return gradient_angle(approx, exact)


def _build_model(cfg: FinetuneConfig, num_classes: int, weights_dir) -> tuple[nn.Module, str]:
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    return build_pretrained(cfg.model, cfg.pretrained, num_classes, weights_dir)


# ---------------------------------------------------------------------------------------
# accounting of the per-step methods
# ---------------------------------------------------------------------------------------
def _decomposition_flops(method: str, shapes: dict, ranks: dict) -> float:
    """Per-iteration cost of the per-step decompositions (0 for BP and LANCE): for each mode of
    size n with L columns, the Gram matrix (2 n^2 L) plus a symmetric eigendecomposition
    (~9 n^3, the usual tridiagonal QR count) for HOSVD; two thin products (4 n L r) and a QR
    (~4 n r^2) for ASI's subspace iteration."""
    total = 0.0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        for m, n in enumerate(shape):
            r = ranks[name][m]
            if r is None:
                continue
            cols = numel // n
            total += (2 * n * n * cols + 9 * n ** 3) if method == "hosvd" else (4 * n * cols * r + 4 * n * r * r)
    return total


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _cpu_total(before: Optional[float], start: float) -> Optional[float]:
    return None if before is None else before + time.process_time() - start


def _evaluate(model: nn.Module, cache: FeatureCache, feats, labels: torch.Tensor, batch_size: int,
              device: torch.device = torch.device("cpu")) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            idx = range(start, min(start + batch_size, len(labels)))
            out = model(cache.batch(feats, idx).to(device))
            correct += int((out.argmax(1).cpu() == labels[list(idx)]).sum())
    return 100.0 * correct / len(labels)


def _epoch_plan(n: int, batch_size: int, seed: int, epoch: int, flip: bool = True):
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    flips = torch.randint(0, 2, (n,), generator=g)
    if not flip:  # the same order as with flips; every image as it is
        flips.zero_()
    steps = n // batch_size  # the last incomplete batch is dropped (fixed batch factor)
    return [(order[i * batch_size:(i + 1) * batch_size], flips[order[i * batch_size:(i + 1) * batch_size]])
            for i in range(steps)]


@dataclass
class _Setup:
    """What a run trains on: the model's trainable suffix, its layers, and the cached features."""

    suffix: nn.Module
    layers: list
    params: list
    cut: str
    train: tuple  # (FeatureCache, features, labels)
    test: tuple
    num_classes: int
    resolution: int
    weights: str
    files: dict  # provenance of the inputs: the weights' sha256, the data files' md5
    device: torch.device = torch.device("cpu")
    cuda_peak: Optional[float] = None  # MiB, torch.cuda.max_memory_allocated over one step (GPU only)
    calibration_s: float = 0.0  # wall seconds of Phase I in this process (0 for BP)


def _prepare(cfg: FinetuneConfig, data_dir, weights_dir, cache_dir, progress: bool,
             device: torch.device = torch.device("cpu")) -> _Setup:
    """Data, model, split and feature cache."""
    from lance import data
    from lance.models import zoo as models

    # the model first: a weights file of another model is refused before seconds of data loading
    num_classes = _num_classes(cfg)
    model, weights_source = _build_model(cfg, num_classes, weights_dir)
    model.eval().to(device)  # frozen BatchNorm and Dropout, as in the paper
    layers = trainable_layers(model, cfg.layers, skip_depthwise=cfg.skip_depthwise)
    train, test = data.load(cfg.dataset, "train", data_dir), data.load(cfg.dataset, "test", data_dir)
    if cfg.classes:
        wanted = list(range(*cfg.classes))
        train, test = data.split_classes(train, wanted), data.split_classes(test, wanted)
    if len(train.classes) != num_classes:
        raise LanceError(f"{cfg.dataset} has {len(train.classes)} classes in this selection, not {num_classes}; "
                         "check --classes.")
    train, test = _subset(train, cfg.train_limit, cfg.seed), _subset(test, cfg.test_limit, cfg.seed + 1)
    resolution = cfg.resolution or models.resolution(cfg.model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    # the cut falls before the first trained layer, and before the last cache_cut convs (a shared cache)
    first = min(layers + trainable_layers(model, max(cfg.layers, cfg.cache_cut))[:1], key=order.__getitem__)
    split = split_model(model, first)
    suffix = split.suffix.eval()
    params = set_trainable(suffix, layers + [head_name(suffix)])
    cache_root = Path(cache_dir or os.environ.get("LANCE_CACHE_DIR", Path.home() / ".cache" / "lance"))
    caches = {}
    for name, subset, flips in (("train", train, True), ("test", test, False)):
        limit = cfg.train_limit if name == "train" else cfg.test_limit
        key = {"version": 1, "model": cfg.model, "weights": weights_source, "resolution": resolution,
               "dataset": cfg.dataset, "split": name, "classes": cfg.classes, "n": len(subset.labels),
               "limit": limit, "cut": split.cut,
               # the seed picks the subset only when there is a limit: every seed of a full run shares one cache
               "seed_subset": cfg.seed if limit else None}
        if device.type != "cpu":  # features computed elsewhere differ in the last bits: their own cache
            key["device"] = device.type
        cache = FeatureCache(cache_root, key, len(subset.labels), flips)
        cache.build(image_fn(subset, resolution), _on(split.prefix, device), progress=progress)
        caches[name] = (cache, cache.load(), subset.labels)
    if len(caches["train"][2]) < cfg.batch_size:
        raise LanceError(f"{len(caches['train'][2])} training images are fewer than one batch of {cfg.batch_size}; "
                         "lower --batch-size or raise --train-limit.")
    return _Setup(suffix, layers, params, split.cut, caches["train"], caches["test"], num_classes,
                  resolution, weights_source, _input_files(cfg, weights_dir, train, test), device)


def _on(prefix, device: torch.device):
    """The frozen prefix run on ``device``, its output back on the CPU (the cache is a file)."""
    if device.type == "cpu":
        return prefix
    return lambda x: prefix(x.to(device)).cpu()


def _input_files(cfg: FinetuneConfig, weights_dir, train, test) -> dict:
    from lance.experiments.provenance import file_sha256
    from lance.models import zoo as models

    weights = models.weights_file(cfg.model, weights_dir) if cfg.pretrained == "imagenet" else Path(cfg.pretrained)
    return {"weights_sha256": None if weights is None else file_sha256(weights),
            "data": {"train": train.origin, "test": test.origin}}


def _num_classes(cfg: FinetuneConfig) -> int:
    """The classifier's width, from the catalogue (no data is read)."""
    from lance.data.catalog import NUM_CLASSES

    total = NUM_CLASSES[cfg.dataset]
    if cfg.classes:
        if cfg.classes[1] > total:
            raise LanceError(f"--classes {cfg.classes[0]} {cfg.classes[1]} reaches past the {total} classes of "
                             f"{cfg.dataset}; END must be at most {total}.")
        return cfg.classes[1] - cfg.classes[0]
    return total


def _phase_one(cfg: FinetuneConfig, s: _Setup):
    """Calibrate on the first batches of the run's own order and swap the layers in; returns the
    calibration (None for BP) and the ranks per layer."""
    if cfg.method == "bp":
        return None, {}
    start = time.perf_counter()
    tc, tfeats, tlabels = s.train
    n_cal = cfg.calibration_batches if cfg.method in ("lance", "asi") else 1
    plan = _epoch_plan(len(tlabels), cfg.batch_size, cfg.seed, epoch=-1, flip=cfg.flip)
    if len(plan) < n_cal:
        raise LanceError(f"--calibration-batches {n_cal} needs {n_cal} batches of {cfg.batch_size}, but the "
                         f"{len(tlabels)} training images give {len(plan)}; lower it or raise --train-limit.")
    batches = [tc.batch(tfeats, idx, fl).to(s.device) for idx, fl in plan[:n_cal]]
    calib = calibrate(s.suffix, batches, s.layers, energy=cfg.energy, num_batches=len(batches),
                      compress_batch=cfg.compress_batch)
    apply_method(s.suffix, cfg.method, calib, hosvd_energy=cfg.hosvd_energy, compress_batch=cfg.compress_batch)
    s.calibration_s = time.perf_counter() - start
    return calib, {n: list(calib[n].ranks) for n in s.layers}


def _optimiser(cfg: FinetuneConfig, params, steps_per_epoch: int):
    script = cfg.optimizer == "script"
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9 if script else 0.0, weight_decay=1e-4 if script else 0.0)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch, eta_min=0.01 * cfg.lr)
             if script else None)
    return opt, sched


@dataclass
class _RunState:
    """What a run carries from epoch to epoch and from process to process (the checkpoint)."""

    history: list = field(default_factory=list)
    epoch: int = 0
    elapsed: float = 0.0  # wall seconds of earlier processes on this run
    commits: list = field(default_factory=list)  # one per process that worked on the run
    cpu_elapsed: Optional[float] = 0.0  # CPU seconds of earlier processes (None: one did not record it)
    initial_norms: Optional[dict] = None


def _weight_norms(suffix: nn.Module, layers) -> dict:
    """How far each trained weight has moved; a diverging run shows here first."""
    return {n: float(suffix.get_submodule(n).weight.detach().norm()) for n in layers}


def _identity(cfg: FinetuneConfig, s: _Setup) -> dict:
    """What a checkpoint must match to be resumed: the config and the weights it started from."""
    return {**dataclasses.asdict(cfg), "weights_sha256": s.files["weights_sha256"]}


def _resume(ckpt_path, cfg: FinetuneConfig, s: _Setup, opt, sched, run: _RunState, log) -> None:
    saved = load_checkpoint(ckpt_path, _identity(cfg, s), defaults=dataclasses.asdict(FinetuneConfig()))
    if saved is None:
        return
    try:
        s.suffix.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        for name, bases in saved.get("asi_bases", {}).items():
            s.suffix.get_submodule(name)._bases = bases
        run.history, run.epoch = list(saved["history"]), int(saved["epoch"])
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise LanceError(f"checkpoint {ckpt_path} is damaged or not this run's ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:100]}); pass --force to start afresh.") from None
    run.elapsed = saved.get("elapsed", sum(h["seconds"] for h in run.history))
    run.commits = saved.get("commits", ["unrecorded"]) + run.commits
    run.cpu_elapsed = saved.get("cpu_elapsed")
    run.initial_norms = saved.get("initial_norms")
    log(f"resumed {Path(ckpt_path).name} after epoch {run.epoch}")


def _cuda_step_peak(s: _Setup, x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    """On a GPU, ``torch.cuda.max_memory_allocated`` (MiB) over one forward and backward of the
    trainable part (its gradients are dropped before the real step); None elsewhere."""
    if s.device.type != "cuda":
        return None
    torch.cuda.synchronize(s.device)
    torch.cuda.reset_peak_memory_stats(s.device)
    F.cross_entropy(s.suffix(x), y).backward()
    torch.cuda.synchronize(s.device)
    return torch.cuda.max_memory_allocated(s.device) / MIB


def _check_finite(loss: torch.Tensor, grad_norm: torch.Tensor, epoch: int, step: int, cfg: FinetuneConfig) -> None:
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        what = "loss" if not torch.isfinite(loss) else "gradient norm"
        value = float((loss if what == "loss" else grad_norm).detach())
        raise DivergedError(f"the training {what} became {value} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr:g}); "
                            "no result was written. Lower --lr, or check the weights for NaN.")


def _train_epoch(cfg: FinetuneConfig, s: _Setup, opt, sched, epoch: int, bar=None,
                 measure: bool = False) -> tuple[dict, Optional[int]]:
    """One epoch; returns its history entry and, with ``measure``, the bytes autograd saved for the
    trained layers on the first step (None otherwise)."""
    tc, tfeats, tlabels = s.train
    script = cfg.optimizer == "script"
    t0, c0 = time.perf_counter(), time.process_time()
    losses, correct, seen, angles, measured = [], 0, 0, {}, None
    for step, (idx, fl) in enumerate(_epoch_plan(len(tlabels), cfg.batch_size, cfg.seed, epoch, flip=cfg.flip)):
        x, y = tc.batch(tfeats, idx, fl).to(s.device, non_blocking=True), tlabels[idx].to(s.device)
        if step == 0:
            if measure:
                measured = sum(measured_bytes(saved_tensors(s.suffix, x), s.layers).values())
                s.cuda_peak = _cuda_step_peak(s, x, y)
            if cfg.method != "bp":  # the exact gradient of this batch, for the angle
                with exact_backward():
                    exact = torch.autograd.grad(F.cross_entropy(s.suffix(x), y),
                                                [s.suffix.get_submodule(n).weight for n in s.layers])
        opt.zero_grad(set_to_none=True)
        out = s.suffix(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        if step == 0 and cfg.method != "bp":
            angles = {n: _angle_or_nan(s.suffix.get_submodule(n).weight.grad, g) for n, g in zip(s.layers, exact)}
        grad_norm = (nn.utils.clip_grad_norm_(s.params, 2.0) if script else
                     torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.params if p.grad is not None])))
        _check_finite(loss, grad_norm, epoch, step, cfg)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
        if bar:
            bar.update(1)
    vc, vfeats, vlabels = s.test
    entry = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_acc": 100.0 * correct / seen,
             "test_acc": _evaluate(s.suffix, vc, vfeats, vlabels, 256, s.device), "angle_deg": angles,
             "weight_norm": _weight_norms(s.suffix, s.layers), "seconds": time.perf_counter() - t0,
             "cpu_seconds": time.process_time() - c0}
    return entry, measured


def _costs(cfg: FinetuneConfig, table, lance_layers: dict, ranks: dict) -> tuple[float, float, float, dict]:
    """Analytic activation bytes, FLOPs per iteration, decomposition FLOPs and the ranks to report."""
    if cfg.method == "bp":
        analytic = float(table.bp_bytes.sum())
        flops = float(table.bp_fwd_flops.sum() + table.bp_bwd_flops.sum())
    elif cfg.method == "hosvd":
        analytic = 4.0 * sum(m.mean_stored_elements for m in lance_layers.values())
        flops = float(table.bp_fwd_flops.sum() + table.bp_bwd_flops.sum())  # same kernels, before decomposition
        ranks = {n: m.last_ranks for n, m in lance_layers.items()}
    else:
        analytic = float(table.lance_bytes.sum())
        flops = float(table.lance_fwd_flops.sum() + table.lance_bwd_flops.sum())
    shapes = {n: (cfg.batch_size,) + tuple(sh[1:]) for n, sh in zip(table.layer, table.input_shape)}
    decomposition = _decomposition_flops(cfg.method, shapes, ranks) if cfg.method in ("hosvd", "asi") else 0.0
    return analytic, flops + decomposition, decomposition, ranks


def _per_step_memory(cfg: FinetuneConfig, lance_layers: dict) -> dict:
    """Per-step HOSVD keeps a different amount at every step: the mean over this process's steps
    (``activation_mb`` above), the largest and the first, as counted (float32)."""
    if cfg.method != "hosvd" or not lance_layers:
        return {}
    first = [m.stored_elements_first for m in lance_layers.values()]
    return {"activation_mb_max": 4.0 * sum(m.stored_elements_max for m in lance_layers.values()) / MIB,
            "activation_mb_first": None if None in first else 4.0 * sum(first) / MIB}


def _record(cfg: FinetuneConfig, s: _Setup, run: _RunState, table, lance_layers, ranks, measured, started,
            wall: float, cpu_start: float) -> dict:
    from lance.experiments.provenance import provenance

    analytic, per_iteration, decomposition, ranks = _costs(cfg, table, lance_layers, ranks)
    steps_per_epoch = len(s.train[2]) // cfg.batch_size
    record = {
        "config": dataclasses.asdict(cfg),
        "metrics": {
            "accuracy": run.history[-1]["test_acc"],
            "activation_mb": analytic / MIB,
            "activation_mb_measured": measured / MIB,
            "cuda_max_memory_allocated_mb": s.cuda_peak,
            # Phase I (the calibration batches through the trained part, the HOSVD, the swap), this process
            "calibration_s": s.calibration_s,
            "bp_activation_mb": float(table.bp_bytes.sum()) / MIB,
            "train_tflops": per_iteration / 1e12,
            "train_tflops_total": per_iteration * steps_per_epoch * cfg.epochs / 1e12,
            "decomposition_tflops": decomposition / 1e12,
            # forward MACs plus weight-gradient MACs, as the paper counts (None for HOSVD: its ranks change)
            "train_tmacs_paper_convention": None if cfg.method == "hosvd" else paper_convention_tmacs(
                table, "bp" if cfg.method == "bp" else "lance"),
            **_per_step_memory(cfg, lance_layers),
            "ranks": ranks,
            "angle_deg": [h["angle_deg"] for h in run.history],
            "weight_norm_initial": run.initial_norms,  # None for a run resumed from an older checkpoint
            "history": run.history,
            "train_images": int(len(s.train[2])),
            "test_images": int(len(s.test[2])),
            "num_classes": s.num_classes,
            "resolution": s.resolution,
            "weights": s.weights,
            "cut": s.cut,
        },
        "provenance": {**started, **s.files, "wall_time_s": run.elapsed + wall, "wall_time_this_process_s": wall,
                       "cpu_time_s": _cpu_total(run.cpu_elapsed, cpu_start), "commits": run.commits,
                       "finished_utc": provenance()["timestamp_utc"]},
    }
    if len(set(run.commits)) > 1:
        record["provenance"]["commit"] = record["provenance"]["git_commit"] = "+".join(dict.fromkeys(run.commits))
    return record


def _check_limits(cfg: FinetuneConfig) -> None:
    """What ``--train-limit`` and the published size of the training split rule out before any
    data is read (a dataset without a fixed size, or a class selection, is checked again by
    :func:`_phase_one` once the data is read)."""
    from lance.data.catalog import TRAIN_IMAGES

    published = TRAIN_IMAGES.get(cfg.dataset)
    if cfg.train_limit and not (published and cfg.train_limit > published):
        images, source, verb, fix = cfg.train_limit, f"--train-limit {cfg.train_limit}", "gives", "raise --train-limit"
    elif published:
        images, source, verb, fix = published, f"the {published} training images of {cfg.dataset}", "give", \
            "lower --batch-size"
    else:
        return
    batches = images // cfg.batch_size
    if batches == 0:
        raise LanceError(f"{source} is fewer than one batch of {cfg.batch_size}; lower --batch-size or raise "
                         "--train-limit.")
    if cfg.method in ("lance", "asi") and cfg.calibration_batches > batches:
        raise LanceError(f"--calibration-batches {cfg.calibration_batches} needs {cfg.calibration_batches} batches of "
                         f"{cfg.batch_size}, but {source} {verb} at most {batches}; lower it or {fix}.")


def _start(cfg, out_dir, checkpoint_dir, overwrite: bool, device):
    """What is checked before anything is computed: the config, the device, the output paths
    (``overwrite`` removes an old checkpoint). Returns the device and the two paths."""
    from lance.experiments.results import check_writable

    if not isinstance(cfg, FinetuneConfig):
        raise LanceError(f"finetune needs a FinetuneConfig, got {type(cfg).__name__}.")
    validate(cfg)  # fields changed after construction are checked too
    _check_limits(cfg)
    for name, folder in (("out_dir", out_dir), ("checkpoint_dir", checkpoint_dir)):
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise LanceError(f"{name} must be a folder's path (str or Path), got {type(folder).__name__}.")
    dev = resolve_device(device)  # a missing GPU is refused before anything else
    out_path = Path(out_dir) / result_name(cfg) if out_dir else None
    if out_path is not None:
        check_writable(out_path, overwrite=overwrite)
    ckpt_path = Path(checkpoint_dir) / (result_name(cfg)[:-5] + ".pt") if checkpoint_dir else None
    if ckpt_path is not None:
        check_writable(ckpt_path, overwrite=True)
        if overwrite:
            ckpt_path.unlink(missing_ok=True)
        else:  # another run's checkpoint under this name: refused now, not after the data is loaded
            check_checkpoint(ckpt_path, dataclasses.asdict(cfg), defaults=dataclasses.asdict(FinetuneConfig()))
    return dev, out_path, ckpt_path


def _save_state(ckpt_path: Path, cfg: FinetuneConfig, s: _Setup, opt, sched, run: _RunState, lance_layers: dict,
                this_process_s: float, cpu_start: float) -> None:
    """The checkpoint after an epoch: everything a resumed run needs to continue bit for bit."""
    save_checkpoint(ckpt_path, {
        "model": s.suffix.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched else None, "history": run.history, "epoch": run.epoch,
        "asi_bases": {n: m._bases for n, m in lance_layers.items() if hasattr(m, "_bases")},
        "elapsed": run.elapsed + this_process_s, "commits": run.commits,
        "cpu_elapsed": _cpu_total(run.cpu_elapsed, cpu_start), "initial_norms": run.initial_norms,
    }, _identity(cfg, s))


def finetune(cfg: FinetuneConfig, *, data_dir=None, weights_dir=None, cache_dir=None, out_dir=None,
             checkpoint_dir=None, progress: bool = True, overwrite: bool = False, log=print,
             device: str = "cpu") -> dict:
    """Run one fine-tuning experiment; see the module docstring. Returns the result record.

    With ``out_dir`` the record is written there as JSON (atomically, never over another file
    unless ``overwrite``). With ``checkpoint_dir`` a checkpoint is written after every epoch and
    an interrupted run resumes from it; ``overwrite`` starts from scratch instead. A loss or
    gradient that becomes NaN or infinite stops the run with :class:`DivergedError`. ``device``
    (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is where everything runs: the feature cache's
    prefix, calibration, the compressed layers, the baselines and evaluation.
    """
    from lance.experiments.provenance import provenance
    from lance.experiments.results import write_result

    dev, out_path, ckpt_path = _start(cfg, out_dir, checkpoint_dir, overwrite, device)
    start_time = time.perf_counter()
    started = provenance(config=dataclasses.asdict(cfg), seed=cfg.seed)  # the code that runs is today's
    started["device"] = device_name(dev)
    torch.manual_seed(cfg.seed)
    s = _prepare(cfg, data_dir, weights_dir, cache_dir, progress, dev)
    calib, ranks = _phase_one(cfg, s)
    table = activation_memory(s.suffix, s.layers, tuple(s.train[1].shape[2:]), cfg.batch_size,
                              calibration=calib if cfg.method in ("lance", "asi") else None)
    steps_per_epoch = len(s.train[2]) // cfg.batch_size
    opt, sched = _optimiser(cfg, s.params, steps_per_epoch)
    # CPU time of the processes (all threads) from here on: unlike the wall time, it leaves out spells
    # in which a process was paused or waited for a shared core
    cpu_start = time.process_time()
    run = _RunState(commits=[started["commit"]], initial_norms=_weight_norms(s.suffix, s.layers))
    _resume(ckpt_path, cfg, s, opt, sched, run, log)
    lance_layers = compressed_layers(s.suffix)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=run.epoch * steps_per_epoch,
                   desc=f"{cfg.method} L{cfg.layers}", leave=False)
    measured = None
    for epoch in range(run.epoch, cfg.epochs):
        entry, first_bytes = _train_epoch(cfg, s, opt, sched, epoch, bar, measure=measured is None)
        measured = first_bytes if measured is None else measured  # what autograd keeps for the trained layers
        run.history.append(entry)
        run.epoch = epoch + 1
        if ckpt_path is not None:
            _save_state(ckpt_path, cfg, s, opt, sched, run, lance_layers, time.perf_counter() - start_time, cpu_start)
    if bar:
        bar.close()
    if measured is None:  # resumed after the last epoch: measure once now
        x = s.train[0].batch(s.train[1], range(cfg.batch_size)).to(s.device)
        measured = sum(measured_bytes(saved_tensors(s.suffix, x), s.layers).values())
    record = _record(cfg, s, run, table, lance_layers, ranks, measured, started,
                     time.perf_counter() - start_time, cpu_start)
    if out_path is not None:
        write_result(out_path, record, overwrite=overwrite)
        log(f"wrote {out_path}")
    return record
