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

from lance.analysis.accounting import MIB, activation_memory, measured_bytes, saved_tensors
from lance.analysis.baselines import asi_factory, hosvd_factory
from lance.experiments.cache import FeatureCache, split_model
from lance.core.calibration import calibrate
from lance.errors import LanceError
from lance.analysis.fidelity import gradient_angle
from lance.core.layers import compress, compressed_layers, exact_backward
from lance.core.selection import head_name, set_trainable, trainable_layers

__all__ = ["FinetuneConfig", "PROFILES", "finetune", "result_name", "METHODS", "image_fn"]

METHODS = ("bp", "hosvd", "asi", "lance")


DEFAULT_LR = 0.05  # the paper's (Table 4)


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the paper (Table 4) and the authors' script."""

    model: str = "mobilenet_v2"
    dataset: str = "cifar100"
    method: str = "lance"  # bp | hosvd | asi | lance
    layers: int = 2  # the last n conv layers are trained, plus the classifier head
    energy: float = 0.7  # LANCE's threshold; also fixes ASI's ranks (its offline budget)
    hosvd_energy: float = 0.8  # per-step HOSVD threshold (the HOSVD authors' scripts use 0.8)
    epochs: int = 50
    batch_size: int = 128
    lr: float = DEFAULT_LR
    optimizer: str = "script"  # script: momentum 0.9, wd 1e-4, cosine to 0.01 lr, clip 2 | table4: plain SGD
    calibration_batches: int = 100
    compress_batch: bool = True  # project the batch mode too (the paper's choice)
    seed: int = 42
    resolution: int = 0  # 0: the model's native resolution
    classes: Optional[tuple[int, int]] = None  # fine-tune on classes [a, b) only (split protocol)
    pretrained: str = "imagenet"  # or the path of a state_dict (split-protocol pretraining)
    train_limit: int = 0  # use only this many training images (0: all); for demonstrations
    test_limit: int = 0
    skip_depthwise: bool = False  # the authors' LANCE selection: the last n convolutions with groups == 1
    cache_cut: int = 4  # cut the cached prefix before the last max(layers, cache_cut) convs, so that
    # runs with 2 and 4 layers share one cache (the frozen blocks in between run in the suffix)

    def __post_init__(self):
        if self.method not in METHODS:
            raise LanceError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.optimizer not in ("script", "table4"):
            raise LanceError(f"optimizer must be 'script' or 'table4', got {self.optimizer!r}.")
        if self.classes is not None:
            self.classes = tuple(self.classes)
        if self.method == "bp":  # BP keeps whole activations: the option means nothing for it
            self.compress_batch = True


PROFILES = {
    "smoke": dict(epochs=1, train_limit=512, test_limit=256, calibration_batches=2, batch_size=64),
    "book": dict(epochs=2, train_limit=2560, test_limit=1000, calibration_batches=10, batch_size=64),
    "paper": dict(),
}


def result_name(cfg: FinetuneConfig) -> str:
    """File name of a run's result: every field that distinguishes runs of the paper's tables."""
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
    return "_".join(parts) + ".json"


# ---------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------
def _subset(imageset, limit: int, seed: int):
    from lance import data

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
    from lance.models import zoo as models

    torch.manual_seed(cfg.seed)  # the new head's initialisation
    if cfg.pretrained == "imagenet":
        model = models.build(cfg.model, num_classes=num_classes, pretrained=True, weights_dir=weights_dir)
        source = str(models.weights_file(cfg.model, weights_dir) or "torchvision download")
    else:
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise LanceError(f"pretrained checkpoint {path} not found; write it with `python -m lance "
                             "pretrain` (`python -m lance plan` lists the command), or pass 'imagenet' or "
                             "another state_dict file.")
        model = models.build(cfg.model, num_classes=num_classes, pretrained=False, weights_dir=weights_dir)
        state = torch.load(path, map_location="cpu", weights_only=True)
        head = head_name(model)
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(head + ".") for k in missing):
            raise LanceError(f"checkpoint {path} does not fit {cfg.model}: missing {missing[:3]}, unexpected {unexpected[:3]}.")
        # the digest ties the run to its pretraining record (data/results/pretrain, metrics.weights_sha256)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        source = f"{path} ({path.stat().st_size} bytes, sha256 {digest})"
    return model, source


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


def _evaluate(model: nn.Module, cache: FeatureCache, feats, labels: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            idx = range(start, min(start + batch_size, len(labels)))
            correct += int((model(cache.batch(feats, idx)).argmax(1) == labels[list(idx)]).sum())
    return 100.0 * correct / len(labels)


def _epoch_plan(n: int, batch_size: int, seed: int, epoch: int):
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    flips = torch.randint(0, 2, (n,), generator=g)
    steps = n // batch_size  # the last incomplete batch is dropped (fixed batch factor)
    return [(order[i * batch_size:(i + 1) * batch_size], flips[order[i * batch_size:(i + 1) * batch_size]])
            for i in range(steps)]


def finetune(cfg: FinetuneConfig, *, data_dir=None, weights_dir=None, cache_dir=None, out_dir=None,
             checkpoint_dir=None, progress: bool = True, overwrite: bool = False, log=print) -> dict:
    """Run one fine-tuning experiment; see the module docstring. Returns the result record.

    With ``out_dir`` the record is written there as JSON (atomically); an existing result is
    never replaced unless ``overwrite``. With ``checkpoint_dir`` a checkpoint is written after
    every epoch and an interrupted run resumes from it.
    """
    from lance import data
    from lance.models import zoo as models
    from lance.experiments.provenance import provenance
    from lance.experiments.results import write_result

    start_time = time.perf_counter()
    started = provenance(config=dataclasses.asdict(cfg), seed=cfg.seed)  # the code that runs is today's
    out_path = Path(out_dir) / result_name(cfg) if out_dir else None
    if out_path is not None and out_path.exists() and not overwrite:
        raise LanceError(f"{out_path} exists; pass overwrite=True (--force) to replace it, or change the config.")
    torch.manual_seed(cfg.seed)

    # -- data -----------------------------------------------------------------------------
    train, test = data.load(cfg.dataset, "train", data_dir), data.load(cfg.dataset, "test", data_dir)
    if cfg.classes:
        wanted = list(range(*cfg.classes))
        train, test = data.split_classes(train, wanted), data.split_classes(test, wanted)
    train, test = _subset(train, cfg.train_limit, cfg.seed), _subset(test, cfg.test_limit, cfg.seed + 1)
    num_classes = len(train.classes)
    resolution = cfg.resolution or models.resolution(cfg.model)

    # -- model, split and cache ---------------------------------------------------------------
    model, weights_source = _build_model(cfg, num_classes, weights_dir)
    model.eval()  # frozen BatchNorm and Dropout, as in the paper
    layers = trainable_layers(model, cfg.layers, skip_depthwise=cfg.skip_depthwise)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    # the cut falls before the first trained layer, and before the last cache_cut convs (a shared cache)
    first = min(layers + trainable_layers(model, max(cfg.layers, cfg.cache_cut))[:1], key=order.__getitem__)
    split = split_model(model, first)
    suffix = split.suffix.eval()
    params = set_trainable(suffix, layers + [head_name(suffix)])
    cache_root = Path(cache_dir or os.environ.get("LANCE_CACHE_DIR", Path.home() / ".cache" / "lance"))
    caches = {}
    for name, subset, flips in (("train", train, True), ("test", test, False)):
        key = {"version": 1, "model": cfg.model, "weights": weights_source, "resolution": resolution,
               "dataset": cfg.dataset, "split": name, "classes": cfg.classes, "n": len(subset.labels),
               "limit": cfg.train_limit if name == "train" else cfg.test_limit, "cut": split.cut,
               # the seed picks the subset only when there is a limit: every seed of a full run shares one cache
               "seed_subset": cfg.seed if (cfg.train_limit if name == "train" else cfg.test_limit) else None}
        cache = FeatureCache(cache_root, key, len(subset.labels), flips)
        cache.build(image_fn(subset, resolution), split.prefix, progress=progress)
        caches[name] = (cache, cache.load(), subset.labels)
    (tc, tfeats, tlabels), (vc, vfeats, vlabels) = caches["train"], caches["test"]
    if len(tlabels) < cfg.batch_size:
        raise LanceError(f"{len(tlabels)} training images are fewer than one batch of {cfg.batch_size}.")

    # -- Phase I and the swap -------------------------------------------------------------------
    ranks: dict = {}
    calib = None
    if cfg.method != "bp":
        n_cal = cfg.calibration_batches if cfg.method in ("lance", "asi") else 1
        plan = _epoch_plan(len(tlabels), cfg.batch_size, cfg.seed, epoch=-1)
        batches = [tc.batch(tfeats, idx, fl) for idx, fl in plan[:n_cal]]
        calib = calibrate(suffix, batches, layers, energy=cfg.energy, num_batches=len(batches),
                          compress_batch=cfg.compress_batch)
        factory = {"lance": None, "asi": asi_factory(), "hosvd": hosvd_factory(cfg.hosvd_energy, cfg.compress_batch)}
        compress(suffix, calib, factory=factory[cfg.method])
        ranks = {n: list(calib[n].ranks) for n in layers}
    in_size = tuple(tfeats.shape[2:])
    table = activation_memory(suffix, layers, in_size, cfg.batch_size,
                              calibration=calib if cfg.method in ("lance", "asi") else None)

    # -- optimiser ----------------------------------------------------------------------------------
    script = cfg.optimizer == "script"
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9 if script else 0.0, weight_decay=1e-4 if script else 0.0)
    steps_per_epoch = len(tlabels) // cfg.batch_size
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch, eta_min=0.01 * cfg.lr)
             if script else None)

    history: list[dict] = []
    start_epoch = 0
    # a run may take several processes: their wall times add up, and each one's commit is kept
    elapsed_before, commits = 0.0, [started["commit"]]
    # CPU time of the processes (all threads): unlike the wall time, it leaves out spells in which a
    # process was paused or waited for a shared core. None once an earlier process did not record it.
    cpu_start, cpu_before = time.process_time(), 0.0

    def weight_norms() -> dict:  # how far each trained weight has moved; a diverging run shows here first
        return {n: float(suffix.get_submodule(n).weight.detach().norm()) for n in layers}

    initial_norms = weight_norms()  # the pretrained weights' (a resumed run takes its checkpoint's)
    ckpt_path = Path(checkpoint_dir) / (result_name(cfg)[:-5] + ".pt") if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        suffix.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        for name, bases in state.get("asi_bases", {}).items():
            suffix.get_submodule(name)._bases = bases
        history, start_epoch = state["history"], state["epoch"]
        # checkpoints written before these were recorded: the epochs' own times, commit unknown
        elapsed_before = state.get("elapsed", sum(h["seconds"] for h in history))
        commits = state.get("commits", ["unrecorded"]) + commits
        cpu_before = state.get("cpu_elapsed")
        initial_norms = state.get("initial_norms")
        log(f"resumed {ckpt_path.name} after epoch {start_epoch}")

    measured = None
    lance_layers = compressed_layers(suffix)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                   desc=f"{cfg.method} L{cfg.layers}", leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        losses, correct, seen, angles = [], 0, 0, {}
        for step, (idx, fl) in enumerate(_epoch_plan(len(tlabels), cfg.batch_size, cfg.seed, epoch)):
            x, y = tc.batch(tfeats, idx, fl), tlabels[idx]
            if step == 0:
                if measured is None:  # what autograd really keeps for the trainable layers
                    measured = sum(measured_bytes(saved_tensors(suffix, x), layers).values())
                if cfg.method != "bp":  # the exact gradient of this batch, for the angle
                    with exact_backward():
                        exact = torch.autograd.grad(F.cross_entropy(suffix(x), y),
                                                    [suffix.get_submodule(n).weight for n in layers])
            opt.zero_grad(set_to_none=True)
            out = suffix(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            if step == 0 and cfg.method != "bp":
                angles = {n: _angle_or_nan(suffix.get_submodule(n).weight.grad, g) for n, g in zip(layers, exact)}
            if script:
                nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            if bar:
                bar.update(1)
        test_acc = _evaluate(suffix, vc, vfeats, vlabels, 256)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_acc": 100.0 * correct / seen,
                        "test_acc": test_acc, "angle_deg": angles, "weight_norm": weight_norms(),
                        "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0})
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": suffix.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched else None, "history": history, "epoch": epoch + 1,
                        "asi_bases": {n: m._bases for n, m in lance_layers.items() if hasattr(m, "_bases")},
                        "elapsed": elapsed_before + time.perf_counter() - start_time, "commits": commits,
                        "cpu_elapsed": _cpu_total(cpu_before, cpu_start), "initial_norms": initial_norms}, tmp)
            os.replace(tmp, ckpt_path)
    if bar:
        bar.close()
    if measured is None:  # resumed after the last epoch: measure once now
        x = tc.batch(tfeats, range(cfg.batch_size))
        measured = sum(measured_bytes(saved_tensors(suffix, x), layers).values())

    # -- the record ---------------------------------------------------------------------------------
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
    shapes = {n: (cfg.batch_size,) + tuple(s[1:]) for n, s in zip(table.layer, table.input_shape)}
    decomposition = _decomposition_flops(cfg.method, shapes, ranks) if cfg.method in ("hosvd", "asi") else 0.0
    per_iteration = flops + decomposition
    wall = time.perf_counter() - start_time
    record = {
        "config": dataclasses.asdict(cfg),
        "metrics": {
            "accuracy": history[-1]["test_acc"],
            "activation_mb": analytic / MIB,
            "activation_mb_measured": measured / MIB,
            "bp_activation_mb": float(table.bp_bytes.sum()) / MIB,
            "train_tflops": per_iteration / 1e12,
            "train_tflops_total": per_iteration * steps_per_epoch * cfg.epochs / 1e12,
            "decomposition_tflops": decomposition / 1e12,
            "ranks": ranks,
            "angle_deg": [h["angle_deg"] for h in history],
            "weight_norm_initial": initial_norms,  # None for a run resumed from an older checkpoint
            "history": history,
            "train_images": int(len(tlabels)),
            "test_images": int(len(vlabels)),
            "num_classes": num_classes,
            "resolution": resolution,
            "weights": weights_source,
            "cut": split.cut,
        },
        "provenance": {**started, "wall_time_s": elapsed_before + wall, "wall_time_this_process_s": wall,
                       "cpu_time_s": _cpu_total(cpu_before, cpu_start), "commits": commits,
                       "finished_utc": provenance()["timestamp_utc"]},
    }
    if len(set(commits)) > 1:
        record["provenance"]["commit"] = record["provenance"]["git_commit"] = "+".join(dict.fromkeys(commits))
    if out_path is not None:
        write_result(out_path, record, overwrite=overwrite)
        log(f"wrote {out_path}")
    return record
