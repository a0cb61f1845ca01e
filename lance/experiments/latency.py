"""Latency of a fine-tuning step: BP, per-step HOSVD, ASI and LANCE (paper Sec. 3.4, Fig. 5).

The paper fine-tunes MCUNet for five iterations at batch 128, five independent trials per
setting, and reports the forward, backward and total time of a training iteration for 1 to 10
trainable layers. ``run_latency(LatencyConfig())`` does the same here:

* for each number ``n`` of trainable layers (the last ``n`` ``nn.Conv2d``, plus the classifier
  head, whose backward counts too), the frozen part before the block of the first trainable
  layer is cut off (:func:`lance.experiments.cache.split_model`) and its output computed once per batch:
  every method then times the same training step of the same trainable part;
* LANCE and ASI use one calibration (Phase I, not timed: it runs once before fine-tuning;
  its time is recorded beside the results); ASI takes its fixed ranks from it, HOSVD
  decomposes every activation anew at every step;
* each trial starts from a fresh copy of the model, runs one warm-up step and then
  ``iterations`` timed steps (forward including the loss, then backward; the SGD update after
  each step is not timed). A round of trials sweeps every setting (layer counts forwards and
  backwards in turn, methods in an order that rotates from round to round), so that a slow
  spell of a shared machine spreads over all settings instead of falling on one.

Threads: the default is one. On a machine whose other cores are busy (here: 2 cores, one
taken by a long job), torch's default of one thread per core makes every parallel region
wait for the contended core, and a step became 3-6 times slower and far noisier.

Every single measurement is kept. ``format_latency`` prints medians with their interquartile
range and the ratios to LANCE; ``summary`` and ``ratios`` (and :func:`lance.book.figures.latency_figure`) give the same as
tables and a figure. ``result_record`` turns a record into the form of the project's result
files (``config`` / ``metrics`` / ``provenance``) and ``read_latency`` reads one back.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.errors import LanceError
from lance.experiments.config import (finite_float, flag, fraction, model_names, non_negative, one_of, option,
                                     positive, resolution_px, seed_value, validate)

__all__ = ["LatencyConfig", "METHODS", "PHASES", "METHOD_LABELS", "run_latency", "format_latency", "summary", "ratios",
           "ratio_ranges", "goal_lines", "result_record", "read_latency", "load_latency"]

METHODS = ("bp", "hosvd", "asi", "lance")
PHASES = ("forward", "backward", "total")
DATA_SOURCES = ("auto", "cifar100", "samples")
METHOD_LABELS = {"bp": "BP", "hosvd": "HOSVD", "asi": "ASI", "lance": "LANCE"}


def _counts(name: str, value) -> None:
    """A non-empty tuple of distinct positive whole numbers."""
    if not isinstance(value, tuple) or not value:
        raise LanceError(f"{name} is empty or not a list: give at least one number of trainable layers, e.g. 1 2.")
    for n in value:
        positive(name, n)
    if len(set(value)) != len(value):
        raise LanceError(f"{name} has repeated entries: {value}.")


def _methods(name: str, value) -> None:
    if not isinstance(value, tuple) or not value:
        raise LanceError(f"{name} is empty: choose some of {', '.join(METHODS)}.")
    for m in value:
        one_of(METHODS)("method", m)
    if len(set(value)) != len(value):
        raise LanceError(f"{name} has repeated entries: {value}.")


def _solvers():
    from lance.core.hosvd import SOLVERS
    return SOLVERS


@dataclass
class LatencyConfig:
    """One latency experiment. Defaults: the paper's setting (Sec. 3.4)."""

    model: str = option("mcunet-in2", "network", one_of(model_names))
    batch_size: int = option(128, "batch size", positive)
    resolution: int = option(0, "input size in px (0: the model's native one, 160 for mcunet-in2)", resolution_px)
    layer_counts: tuple[int, ...] = option(tuple(range(1, 11)), "numbers of last conv layers trained", _counts)
    methods: tuple[str, ...] = option(METHODS, "methods timed", _methods)
    iterations: int = option(5, "timed steps per trial, after one warm-up step", positive)
    trials: int = option(5, "independent trials (a fresh model copy each)", positive)
    energy: float = option(0.7, "LANCE's threshold; also fixes ASI's ranks", fraction)
    hosvd_energy: float = option(0.8, "per-step HOSVD threshold (the HOSVD authors' scripts)", fraction)
    hosvd_solver: str = option("gram", "how per-step HOSVD finds each mode's basis: eigh of its Gram matrix, or an "
                               "SVD of the unfolding", one_of(_solvers))
    calibration_batches: int = option(4, "Phase I batches (not timed; the accuracy runs use 100)", positive)
    num_classes: int = option(10, "classes of the new head (CIFAR-10's ten in the paper)", positive)
    data: str = option("auto", "inputs: auto (CIFAR-100 classes 0-9 if found, else the 20 sample photographs), "
                       "cifar100 or samples", one_of(DATA_SOURCES))
    pretrained: bool = option(True, "ImageNet weights (off: random initialisation, for tests)", flag)
    lr: float = option(0.05, "the untimed SGD update after each step", finite_float)
    seed: int = option(0, "seed", seed_value)
    threads: int = option(1, "torch threads (0: torch's default); see the module docstring", non_negative)

    def __post_init__(self):
        if isinstance(self.layer_counts, (int, list)):
            self.layer_counts = (self.layer_counts,) if isinstance(self.layer_counts, int) else tuple(self.layer_counts)
        if isinstance(self.methods, (str, list)):
            self.methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        validate(self)


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _cifar_batches(cfg: LatencyConfig, resolution: int, n: int, data_dir) -> tuple[list, str]:
    """``n`` batches of CIFAR-100 training images of classes 0..num_classes-1, upscaled to
    ``resolution``, randomly flipped, normalised; with their labels."""
    from lance import data

    train = data.split_classes(data.load("cifar100", "train", data_dir), range(cfg.num_classes))
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train.labels), generator=g)
    if len(order) < n * cfg.batch_size:
        raise LanceError(f"CIFAR-100 classes 0-{cfg.num_classes - 1} have {len(order)} training images, fewer than "
                         f"{n} batches of {cfg.batch_size}.")
    batches = []
    for i in range(n):
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = torch.as_tensor(train.images[idx.numpy()]).permute(0, 3, 1, 2).float().div(255)
        if x.shape[-1] != resolution:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > resolution)
        flip = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        batches.append((data.normalize(x), torch.as_tensor(train.labels)[idx].long()))
    return batches, (f"CIFAR-100 training images of classes 0-{cfg.num_classes - 1} "
                     f"(CIFAR-10 is not available here), upscaled from 32 to {resolution} px, random flips")


def _sample_batches(cfg: LatencyConfig, resolution: int, n: int) -> tuple[list, str]:
    from lance import data

    images, _ = data.sample_images(resolution)
    g = torch.Generator().manual_seed(cfg.seed)
    batches = [(x, torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g))
               for x in data.augmented_batches(images, cfg.batch_size, n, seed=cfg.seed)]
    return batches, (f"random crops and flips of the 20 ImageNet sample photographs at {resolution} px "
                     "(random labels)")


def _input_batches(cfg: LatencyConfig, resolution: int, n: int, data_dir) -> tuple[list, str]:
    if cfg.data == "samples":
        return _sample_batches(cfg, resolution, n)
    try:
        return _cifar_batches(cfg, resolution, n, data_dir)
    except LanceError:
        if cfg.data == "cifar100":
            raise
        return _sample_batches(cfg, resolution, n)


# ---------------------------------------------------------------------------------------
# the timed steps
# ---------------------------------------------------------------------------------------
def _head_name(model: nn.Module) -> str:
    for name in ("fc", "classifier"):
        if hasattr(model, name):
            return name
    raise LanceError(f"cannot find the classifier head (fc or classifier) of {type(model).__name__}.")


def _prepare(base: nn.Module, method: str, calib, cfg: LatencyConfig) -> nn.Module:
    from lance.analysis.methods import apply_method

    return apply_method(copy.deepcopy(base), method, calib, hosvd_energy=cfg.hosvd_energy,
                        hosvd_solver=cfg.hosvd_solver)


def _time_trial(model: nn.Module, steps: list, lr: float, device: torch.device = torch.device("cpu")
                ) -> tuple[list, list]:
    """One trial: a warm-up step on ``steps[0]``, then one timed step per further batch (on a GPU,
    each phase is timed to the end of its queued work)."""
    from lance.experiments.device import synchronize

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    forward, backward = [], []
    for i, (x, y) in enumerate(steps):
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        synchronize(device)
        t1 = time.perf_counter()
        loss.backward()
        synchronize(device)
        t2 = time.perf_counter()
        opt.step()
        if i:
            forward.append(t1 - t0)
            backward.append(t2 - t1)
    return forward, backward


def _settings(net: nn.Module, head: str, batches, cfg: LatencyConfig, setup: dict) -> dict:
    """Per layer count: (layers, trainable part, calibration, timed steps). The frozen prefix runs
    once per cut; calibration times go into ``setup``."""
    from lance.core.calibration import calibrate
    from lance.core.selection import set_trainable, trainable_layers
    from lance.experiments.cache import split_model

    features: dict[str, list[Tensor]] = {}  # prefix outputs, once per cut
    settings = {}
    for n in cfg.layer_counts:
        layers = trainable_layers(net, n)
        split = split_model(net, layers[0])
        if split.cut not in features:
            features[split.cut] = [split.prefix(x) for x, _ in batches]
        feats, labels = features[split.cut], [y for _, y in batches]
        base = split.suffix.eval()
        params = set_trainable(base, layers + [head])
        calib = None
        if any(m != "bp" for m in cfg.methods):
            t0 = time.perf_counter()
            calib = calibrate(base, feats[:cfg.calibration_batches], layers, energy=cfg.energy,
                              num_batches=cfg.calibration_batches)
            setup["calibration_s"][str(n)] = time.perf_counter() - t0
        setup["cuts"][str(n)] = split.cut
        setup["trainable_parameters"][str(n)] = sum(p.numel() for p in params)
        steps = list(zip(feats[cfg.calibration_batches:], labels[cfg.calibration_batches:]))
        settings[n] = (layers, base, calib, steps)
    return settings


def _trials(settings: dict, cfg: LatencyConfig, start: float, log) -> dict:
    """Every trial sweeps all settings (in alternating order, the methods rotated), so that slow
    spells of the machine spread over all of them."""
    from lance.analysis.methods import ranks_of

    rows = {(n, m): {"layers": n, "method": m, "trial": [], "forward_s": [], "backward_s": [], "total_s": [],
                     "ranks": {}} for n in cfg.layer_counts for m in cfg.methods}
    for trial in range(cfg.trials):
        k = trial % len(cfg.methods)
        for n in (cfg.layer_counts if trial % 2 == 0 else cfg.layer_counts[::-1]):
            layers, base, calib, steps = settings[n]
            for method in cfg.methods[k:] + cfg.methods[:k]:
                model = _prepare(base, method, calib, cfg)
                fwd, bwd = _time_trial(model, steps, cfg.lr, next(model.parameters()).device)
                r = rows[(n, method)]
                r["trial"] += [trial] * len(fwd)
                r["forward_s"] += fwd
                r["backward_s"] += bwd
                r["total_s"] += [f + b for f, b in zip(fwd, bwd)]
                r["ranks"] = ranks_of(model, layers, method, calib)
        log(f"  trial {trial + 1}/{cfg.trials} done after {time.perf_counter() - start:.0f} s")
    return rows


def run_latency(cfg: LatencyConfig, *, data_dir=None, weights_dir=None, log: Callable = print,
                device: str = "cpu") -> dict:
    """Run the latency experiment; returns ``{"config", "setup", "results", "provenance"}``.

    ``results`` has one entry per (layers, method) with every measurement: ``forward_s``,
    ``backward_s`` and ``total_s`` (``trials x iterations`` values each, trial-major) and
    ``trial`` (the trial of each value), plus the ranks used.
    """
    from lance.core.selection import trainable_layers
    from lance.experiments.device import device_name, resolve_device
    from lance.experiments.provenance import provenance
    from lance.models import zoo as models

    dev = resolve_device(device)
    start = time.perf_counter()
    started = provenance(config=asdict(cfg), seed=cfg.seed)
    started["device"] = device_name(dev)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        net = models.build(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, weights_dir=weights_dir)
        net.eval().to(dev)  # frozen BatchNorm and Dropout, as in the paper's fine-tuning
        weights = (str(models.weights_file(cfg.model, weights_dir) or "torchvision") if cfg.pretrained
                   else "none (random initialisation)")
        trainable_layers(net, max(cfg.layer_counts))  # fail now, not after the first settings
        head = _head_name(net)
        resolution = cfg.resolution or models.resolution(cfg.model)
        n_batches = cfg.calibration_batches + 1 + cfg.iterations
        batches, data_note = _input_batches(cfg, resolution, n_batches, data_dir)
        batches = [(x.to(dev), y.to(dev)) for x, y in batches]
        log(f"{cfg.model} at {resolution} px, batch {cfg.batch_size}, {torch.get_num_threads()} threads; "
            f"inputs: {data_note}")
        setup = {"data": data_note, "weights": weights, "resolution": resolution,
                 "threads": torch.get_num_threads(), "cuts": {}, "trainable_parameters": {}, "calibration_s": {}}
        settings = _settings(net, head, batches, cfg, setup)
        rows = _trials(settings, cfg, start, log)
        results = [rows[(n, m)] for n in cfg.layer_counts for m in cfg.methods]
        for n in cfg.layer_counts:
            log(f"  {n:2d} layers: " + ", ".join(
                f"{m} {_median(rows[(n, m)]['total_s']) * 1e3:.1f} ms" for m in cfg.methods))
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - start
    setup["wall_time_s"] = wall
    return {
        "config": asdict(cfg),
        "setup": setup,
        "results": results,
        "provenance": {**started, "wall_time_s": wall},
    }


# ---------------------------------------------------------------------------------------
# result files
# ---------------------------------------------------------------------------------------
def result_record(record: dict) -> dict:
    """The record in the form of the project's result files: ``config``, ``metrics`` (the
    per-setting ``results`` and the ``setup``) and ``provenance``."""
    return {"config": record["config"], "metrics": {"results": record["results"], "setup": record["setup"]},
            "provenance": record["provenance"]}


def read_latency(path) -> dict:
    """A latency result file, in the form :func:`run_latency` returns."""
    from lance.experiments.results import read_result

    d = read_result(path)
    if "results" in d:
        return d
    try:
        return {"config": d["config"], "setup": d["metrics"]["setup"], "results": d["metrics"]["results"],
                "provenance": d["provenance"]}
    except KeyError:
        raise LanceError(f"{path} is not a latency result file (no metrics.results).") from None


def load_latency(directory=None) -> dict[str, dict]:
    """Every latency result file under ``directory`` (default ``data/results/latency``), by file name."""
    from lance.experiments.results import RESULTS_DIR

    directory = Path(directory) if directory else RESULTS_DIR / "latency"
    return {p.name: read_latency(p) for p in sorted(directory.glob("*.json"))}


# ---------------------------------------------------------------------------------------
# statistics, table, figure
# ---------------------------------------------------------------------------------------
def _median(values) -> float:
    import statistics

    return statistics.median(values)


def _quantile(values, q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary(record: dict):
    """One row per (layers, method, phase): median, quartiles, min, max and mean, in ms."""
    import pandas as pd

    rows = []
    for r in record["results"]:
        for phase in PHASES:
            v = [t * 1e3 for t in r[f"{phase}_s"]]
            rows.append({"layers": r["layers"], "method": r["method"], "phase": phase, "median_ms": _median(v),
                         "q25_ms": _quantile(v, 0.25), "q75_ms": _quantile(v, 0.75), "min_ms": min(v),
                         "max_ms": max(v), "mean_ms": sum(v) / len(v), "n": len(v)})
    return pd.DataFrame(rows)


def ratios(record: dict, phase: str = "total", statistic: str = "median_ms", reference: str = "lance"):
    """Per number of layers (rows) and method (columns): that method's time over ``reference``'s
    (above 1: slower than the reference)."""
    if phase not in PHASES:
        raise LanceError(f"phase must be one of {PHASES}, got {phase!r}.")
    s = summary(record)
    s = s[s.phase == phase].pivot(index="layers", columns="method", values=statistic)
    if reference not in s:
        raise LanceError(f"the record has no {reference!r} results to compare with.")
    out = s.div(s[reference], axis=0).drop(columns=reference)
    return out[[m for m in METHODS if m in out]]


def ratio_ranges(record: dict, phase: str = "total", statistic: str = "median_ms"):
    """Per method: the smallest and largest ratio to LANCE over the layer counts (the paper's
    "BP is x-y slower than LANCE")."""
    import pandas as pd

    r = ratios(record, phase, statistic)
    return pd.DataFrame({"min": r.min(), "max": r.max()})


def format_latency(record: dict) -> str:
    """The printed table: medians [interquartile range] in ms per (layers, method) and phase,
    then each method's total time over LANCE's."""
    cfg, setup = record["config"], record.get("setup", {})
    s = summary(record).set_index(["layers", "method", "phase"])
    fmt = lambda row: f"{row.median_ms:8.2f} [{row.q25_ms:7.2f}-{row.q75_ms:7.2f}]"  # noqa: E731
    lines = [
        f"Latency of a fine-tuning step: {cfg['model']} at {setup.get('resolution', cfg['resolution'])} px, "
        f"batch {cfg['batch_size']}, {setup.get('threads', '?')} threads, eps {cfg['energy']} "
        f"(HOSVD {cfg['hosvd_energy']}, bases by {cfg.get('hosvd_solver', 'gram')}), "
        f"{cfg['calibration_batches']} calibration batches",
        f"inputs: {setup.get('data', '?')}",
        f"times in ms: median [25th-75th percentile] of {cfg['trials']} trials x {cfg['iterations']} steps "
        "(after one warm-up step per trial); the frozen prefix is cut off and its output reused",
        "",
        f"{'layers':>6} {'method':>6} {'forward':>26} {'backward':>26} {'total':>26} {'total/LANCE':>12}",
    ]
    has_lance = "lance" in cfg["methods"]
    rel = ratios(record) if has_lance else None
    for n in cfg["layer_counts"]:
        for m in cfg["methods"]:
            cells = [fmt(s.loc[(n, m, p)]) for p in PHASES]
            ratio = f"{rel.loc[n, m]:12.2f}" if has_lance and m != "lance" else f"{'':12}"
            lines.append(f"{n:>6} {m:>6} {cells[0]:>26} {cells[1]:>26} {cells[2]:>26} {ratio}")
    if has_lance and len(cfg["methods"]) > 1:
        lines.append("")
        for phase in PHASES:
            rr = ratio_ranges(record, phase)
            lines.append(f"{phase:>8}, relative to LANCE over {len(cfg['layer_counts'])} layer counts: " + ", ".join(
                f"{METHOD_LABELS[m]} {rr.loc[m, 'min']:.2f}-{rr.loc[m, 'max']:.2f}x" for m in rr.index))
        lines += [""] + goal_lines(record)
    return "\n".join(lines)


def goal_lines(record: dict) -> list[str]:
    """The project's speed goals checked on a record (median total times, per layer count):
    LANCE's step at most as slow as BP's, per-step HOSVD at least 10x slower than LANCE."""
    total = ratios(record)
    n, out = len(total), []
    if "bp" in total:
        out.append(f"goal, LANCE's step at most as slow as BP's: met at {int((total.bp >= 1).sum())} of {n} "
                   "layer counts")
    if "hosvd" in total:
        solver = record["config"].get("hosvd_solver", "gram")
        out.append(f"goal, per-step HOSVD (bases by {solver}) at least 10x slower than LANCE: met at "
                   f"{int((total.hosvd >= 10).sum())} of {n} layer counts")
    return out
