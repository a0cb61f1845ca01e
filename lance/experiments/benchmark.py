"""Benchmark: time and saved bytes of one training step, plain backprop against LANCE.

``python -m lance benchmark`` fine-tunes the last 2 and the last 4 conv layers (plus the
head) of ResNet18 at 224 px and batch 128, as the paper does, and prints, measured in one
run: the forward and backward time of one training step (median and range over repeats)
and the bytes autograd saves for the trainable layers, for BP and for LANCE at eps 0.7, and
their ratios, against the goals of a LANCE step (forward at most 1.05x BP's, step at most
0.75x). A third model, LANCE with every rank 1 (the floor), shows the least any LANCE step
can take on this network: its forward, input gradients and frozen layers' backward are BP's
own. With ``lean`` (the default) a fourth model, LANCE with a lean step (``lance.core.lean``:
frozen BatchNorm keeps no activation and ReLU one bit per element; the gradients are
unchanged), shows how far the whole step's saved bytes fall when what lies between the
trained layers is kept compact too. The frozen trunk's output is computed once and reused:
the step timed is the part of the network that training runs through (from the block of the
first trained layer of the deepest setting to the head). ``--model`` takes any model
``lance.models.zoo.build`` knows; ``--pretrained`` a state_dict that ``python -m lance pretrain``
wrote (the paper's split-class protocol: ResNet18's ImageNet weights are not to be had here,
and with random weights its ranks say nothing about a trained network's).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from lance.analysis.accounting import MIB, activation_memory, measured_bytes, saved_tensors
from lance.core.calibration import calibrate
from lance.analysis.methods import apply_method, ranks_of
from lance.errors import LanceError
from lance.experiments.config import (distinct, flag, fraction, model_names, non_negative, one_of, option, positive,
                                     resolution_px, validate)
from lance.experiments.allocator import allocator_state, steady_allocator
from lance.experiments.device import synchronize
from lance.experiments.cache import split_model
from lance.core.selection import head_name, set_trainable, trainable_layers
from lance.experiments.weights import build_pretrained, check_pretrained

__all__ = ["BenchmarkConfig", "run_benchmark", "format_report", "ratios_to_bp", "result_record", "read_benchmark",
           "load_benchmarks"]


def _counts(name: str, value) -> None:
    if not isinstance(value, (tuple, list)) or not value:
        raise LanceError(f"{name} needs at least one number of layers, as a list (e.g. (2, 4)).")
    for v in value:
        positive(name, v)
    distinct(name, value)


@dataclass
class BenchmarkConfig:
    model: str = option("resnet18", "network", one_of(model_names))
    resolution: int = option(0, "input size in px (0: the model's native resolution)", resolution_px)
    batch_size: int = option(128, "batch size", positive)
    energy: float = option(0.7, "LANCE's energy threshold", fraction)
    layer_counts: tuple[int, ...] = option((2, 4), "numbers of last conv layers to train", _counts)
    calibration_batches: int = option(4, "Phase I batches", positive)
    repeats: int = option(5, "timed steps per method and setting", positive)
    seed: int = option(0, "seed", non_negative)
    pretrained: str = option("imagenet", "'imagenet' (the zoo's file in the weights folder; random "
                                         "initialisation without one) or the path of a state_dict "
                                         "(split-protocol pretraining)", check_pretrained)
    lean: bool = option(True, "also LANCE with a lean step: frozen BatchNorm keeps no activation, ReLU one bit "
                              "per element; gradients unchanged", flag)
    compress_head: bool = option(False, "in the lean step, compress the head's input too (a LANCE linear layer)",
                                 flag)
    steady_allocator: bool = option(True, "keep freed memory in the process (glibc's mallopt), as a caching "
                                          "allocator does (off: glibc's defaults, which hand large blocks back "
                                          "after every step and fault them in again in the next)", flag)
    weights_dir: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self):
        validate(self)
        if self.threads is not None:
            non_negative("threads", self.threads)
        if self.weights_dir is not None and not isinstance(self.weights_dir, (str, os.PathLike)):
            raise LanceError(f"weights_dir must be a folder's path, got {type(self.weights_dir).__name__}.")


@dataclass
class StepResult:
    layers: int
    method: str
    forward_s: list[float] = field(default_factory=list)
    backward_s: list[float] = field(default_factory=list)
    saved_bytes: int = 0  # what autograd saved for the trainable layers, measured
    analytic_bytes: int = 0
    total_saved_bytes: int = 0  # every activation the step saved (BN, ReLU, ... included)
    ranks: dict = field(default_factory=dict)
    forward_flops: int = 0  # counted by torch's FLOP counter on one step, not timed
    backward_flops: int = 0

    @property
    def step_s(self) -> list[float]:
        return [f + b for f, b in zip(self.forward_s, self.backward_s)]


def _count_flops(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """The FLOPs of one step's forward and backward, as torch's FLOP counter sees the kernels run
    (matrix products and convolutions, the projections inside LANCE's layers included)."""
    from torch.utils.flop_counter import FlopCounterMode

    for p in model.parameters():
        p.grad = None
    with FlopCounterMode(display=False) as fwd:
        loss = nn.functional.cross_entropy(model(x), target)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


def _time_steps(models: dict, x: torch.Tensor, target: torch.Tensor, repeats: int, results: dict) -> None:
    """Time one training step of every model, alternating between them so that a change in the
    machine's load hits all methods alike; the first round warms up and is not counted."""
    for i in range(repeats + 1):
        for method, model in models.items():
            for p in model.parameters():
                p.grad = None
            synchronize(x.device)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), target)
            synchronize(x.device)
            t1 = time.perf_counter()
            loss.backward()
            synchronize(x.device)
            t2 = time.perf_counter()
            if i:
                results[method].forward_s.append(t1 - t0)
                results[method].backward_s.append(t2 - t1)


def run_benchmark(cfg: BenchmarkConfig, log=print, device: str = "cpu") -> dict:
    """Run the benchmark; returns a dict with the config, per-setting results and provenance."""
    from lance import data
    from lance.models import zoo as models
    from lance.experiments.device import device_name, resolve_device
    from lance.experiments.provenance import provenance

    dev = resolve_device(device)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    allocator = steady_allocator() if cfg.steady_allocator else allocator_state()
    log(f"allocator: {allocator}")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.pretrained == "imagenet" and models.weights_file(cfg.model, cfg.weights_dir) is None:
        net = models.build(cfg.model, num_classes=100, pretrained=False)
        weights_note = "none found: random initialisation (set LANCE_WEIGHTS_DIR)"
    else:
        net, weights_note = build_pretrained(cfg.model, cfg.pretrained, 100, cfg.weights_dir)
    log(f"model {cfg.model}, weights: {weights_note}")
    net.eval().to(dev)  # frozen BatchNorm, as in the paper's fine-tuning
    resolution = cfg.resolution or models.resolution(cfg.model)
    images, _ = data.sample_images(resolution)
    # the frozen part before the deepest setting runs once; what is timed is the rest
    split = split_model(net, trainable_layers(net, max(cfg.layer_counts))[0])
    log(f"frozen part (up to {split.cut}) for {cfg.calibration_batches + 1} batches of {cfg.batch_size} real images ...")
    batches = [split.prefix(b.to(dev)) for b in data.augmented_batches(images, cfg.batch_size, cfg.calibration_batches + 1,
                                                                seed=cfg.seed)]
    x, calib_inputs = batches[0], batches[1:]
    target = torch.randint(0, 100, (cfg.batch_size,), generator=torch.Generator().manual_seed(cfg.seed)).to(dev)
    results: list[StepResult] = []
    for n in cfg.layer_counts:
        results += _one_setting(cfg, net, split, n, x, calib_inputs, target, log)
    wall = time.perf_counter() - start
    return {
        "config": {**asdict(cfg), "weights": weights_note, "allocator": allocator},
        "results": [{**asdict(r), "step_s": r.step_s} for r in results],
        "provenance": {**provenance(config=asdict(cfg), seed=cfg.seed, wall_time_s=wall), "device": device_name(dev)},
    }


def _one_setting(cfg: BenchmarkConfig, net, split, n: int, x, calib_inputs, target, log) -> list[StepResult]:
    """BP, LANCE, the rank-1 floor and (with ``cfg.lean``) the lean step on the last ``n``
    layers of ``net`` (run as ``split.suffix``): each one's saved bytes and ranks, then their
    interleaved timings."""
    names = trainable_layers(net, n)
    base = copy.deepcopy(split.suffix)
    set_trainable(base, names + [head_name(base)])
    head = head_name(base)
    cal = calibrate(base, calib_inputs, names + ([head] if cfg.lean and cfg.compress_head else []),
                    energy=cfg.energy, num_batches=cfg.calibration_batches)
    table = activation_memory(base, names, tuple(x.shape[1:]), cfg.batch_size, calibration=cal)
    # plain LANCE trains its head on the full input; the lean step compresses it when asked
    nets = {"bp": base, "lance": apply_method(copy.deepcopy(base), "lance", cal_without(cal, head))}
    # every rank 1: what is left is the forward, the input gradients and the frozen layers' backward,
    # all as in BP; no LANCE step (no threshold) can be faster than this one
    rank_one = calibrate(base, calib_inputs, names, energy=FLOOR_ENERGY, num_batches=cfg.calibration_batches)
    nets["floor"] = apply_method(copy.deepcopy(base), "lance", rank_one)
    if cfg.lean:
        from lance.core.lean import lean

        nets["lean"] = lean(apply_method(copy.deepcopy(base), "lance", cal))
    step = {}
    for method, model in nets.items():
        res = StepResult(n, method)
        report = saved_tensors(model, x)
        res.saved_bytes = sum(measured_bytes(report, names).values())
        res.total_saved_bytes = int(report[report.kind != "parameter"].drop_duplicates("storage").bytes.sum())
        res.analytic_bytes = int(table["bp_bytes" if method == "bp" else "lance_bytes"].sum())
        res.ranks = ranks_of(model, names, "bp" if method == "bp" else "lance", rank_one if method == "floor" else cal)
        res.forward_flops, res.backward_flops = _count_flops(model, x, target)
        step[method] = res
    _time_steps(nets, x, target, cfg.repeats, step)
    for method, res in step.items():
        log(f"  {n} layers, {method:5s}: step {statistics.median(res.step_s) * 1e3:8.1f} ms, "
            f"saved {res.saved_bytes / MIB:8.3f} MiB")
    return list(step.values())


#: the energy threshold that keeps one direction per mode: the benchmark's rank-1 LANCE, the floor
FLOOR_ENERGY = 1e-9

#: the goals a step is measured against (issue 19): LANCE's forward at most 1.05x BP's, its step at most 0.75x
FORWARD_GOAL, STEP_GOAL = 1.05, 0.75


def cal_without(cal, name: str):
    """The calibration without one layer."""
    from lance.core.calibration import Calibration

    return Calibration({k: v for k, v in cal.layers.items() if k != name}, cal.energy, cal.num_batches,
                       cal.compress_batch)


def result_record(out: dict) -> dict:
    """:func:`run_benchmark`'s output in the form of every result file of the project:
    ``config``, ``metrics`` (the per-setting ``results``) and ``provenance``."""
    return {"config": out["config"], "metrics": {"results": out["results"]}, "provenance": out["provenance"]}


def read_benchmark(path) -> dict:
    """A benchmark file (of either form: files written before the common one kept ``results`` at
    the top), in the form :func:`run_benchmark` returns."""
    from lance.experiments.results import read_result

    d = read_result(path)
    if "results" in d:
        return d
    try:
        return {"config": d["config"], "results": d["metrics"]["results"], "provenance": d["provenance"]}
    except (KeyError, TypeError):
        raise LanceError(f"{path} is not a benchmark result file (no metrics.results).") from None


def ratios_to_bp(out: dict) -> list[dict]:
    """Every method's times over BP's, per number of layers: the medians of the forward, the
    backward and the step, and, where the file counted them, the same ratios in FLOPs (the
    ratios the times would have if every FLOP cost the same and nothing else took time)."""
    rows = {(r["layers"], r["method"]): r for r in out["results"]}
    med = lambda r, key: statistics.median(r[key])  # noqa: E731
    table = []
    for (n, method), r in rows.items():
        bp = rows.get((n, "bp"))
        if method == "bp" or bp is None:
            continue
        row = {"layers": n, "method": method, **{phase: med(r, f"{phase}_s") / med(bp, f"{phase}_s")
                                                  for phase in ("forward", "backward", "step")}}
        if r.get("forward_flops") and bp.get("forward_flops"):  # files written before the count lack it
            row.update(forward_flops=r["forward_flops"] / bp["forward_flops"],
                       backward_flops=r["backward_flops"] / bp["backward_flops"],
                       step_flops=(r["forward_flops"] + r["backward_flops"]) / (bp["forward_flops"] + bp["backward_flops"]))
        table.append(row)
    return table


def load_benchmarks(directory=None) -> dict[str, dict]:
    """Every benchmark result file under ``directory`` (default ``data/results/benchmark``), by
    file name without ``.json`` (one model may have files for several weights)."""
    from pathlib import Path

    from lance.experiments.results import RESULTS_DIR

    directory = Path(directory) if directory else RESULTS_DIR / "benchmark"
    return {p.stem: read_benchmark(p) for p in sorted(directory.glob("*.json"))}


def format_report(out: dict) -> str:
    """The printed figures: per setting, BP and LANCE side by side, with ratios."""
    cfg = out["config"]
    rows = {(r["layers"], r["method"]): r for r in out["results"]}
    lines = [
        f"LANCE benchmark: {cfg['model']} at {cfg['resolution'] or 'native'} px, batch {cfg['batch_size']}, "
        f"eps {cfg['energy']}, {cfg['calibration_batches']} calibration batches, "
        f"{out['provenance'].get('hardware', {}).get('torch_threads', '?')} threads",
        f"weights: {cfg['weights']}; allocator: {cfg.get('allocator', 'not recorded')}",
        f"times: median [min, max] of {cfg['repeats']} steps after one warm-up; the frozen part before the "
        "trained blocks runs once and its output is reused",
        "",
        f"{'layers':>6} {'method':>6} {'forward ms':>22} {'backward ms':>22} {'step ms':>22} "
        f"{'saved MiB':>10} {'analytic MiB':>12} {'all saved MiB':>13}",
    ]
    fmt = lambda v: f"{statistics.median(v) * 1e3:7.1f} [{min(v) * 1e3:6.1f},{max(v) * 1e3:6.1f}]"  # noqa: E731
    methods = [m for m in ("bp", "lance", "floor", "lean") if any(key[1] == m for key in rows)]
    for n in cfg["layer_counts"]:
        for method in methods:
            r = rows[(n, method)]
            lines.append(f"{n:>6} {method:>6} {fmt(r['forward_s']):>22} {fmt(r['backward_s']):>22} "
                         f"{fmt(r['step_s']):>22} {r['saved_bytes'] / MIB:>10.3f} {r['analytic_bytes'] / MIB:>12.3f} "
                         f"{r['total_saved_bytes'] / MIB:>13.3f}")
    lines.append("")
    ratio = {(r["layers"], r["method"]): r for r in ratios_to_bp(out)}
    for n in cfg["layer_counts"]:
        bp, la, q = rows[(n, "bp")], rows[(n, "lance")], ratio[(n, "lance")]
        lines.append(f"last {n} layers: BP/LANCE step time {1 / q['step']:.2f}x, saved bytes "
                     f"{bp['saved_bytes'] / la['saved_bytes']:.1f}x (LANCE ranks {la['ranks']})")
        verdict = lambda ratio, goal: "met" if ratio <= goal else "not met"  # noqa: E731
        goals = (f"  LANCE/BP forward {q['forward']:.2f}x (goal <= {FORWARD_GOAL}: {verdict(q['forward'], FORWARD_GOAL)}), "
                 f"backward {q['backward']:.2f}x, step {q['step']:.2f}x (goal <= {STEP_GOAL}: "
                 f"{verdict(q['step'], STEP_GOAL)})")
        fl = ratio.get((n, "floor"))
        if fl:
            goals += (f"; every rank 1, the least a LANCE step can take here: forward {fl['forward']:.2f}x, "
                      f"step {fl['step']:.2f}x BP's")
        lines.append(goals)
        if "forward_flops" in q:
            flops = (f"  in counted FLOPs (matrix products and convolutions; the ratios if each FLOP cost the same "
                     f"time and nothing else took any): LANCE/BP forward {q['forward_flops']:.2f}x, backward "
                     f"{q['backward_flops']:.2f}x, step {q['step_flops']:.2f}x")
            if fl and "forward_flops" in fl:
                flops += f"; every rank 1: forward {fl['forward_flops']:.2f}x, step {fl['step_flops']:.2f}x"
            lines.append(flops)
        whole = f"  the whole step's saved bytes: BP/LANCE {bp['total_saved_bytes'] / la['total_saved_bytes']:.1f}x"
        if (n, "lean") in rows:
            le = rows[(n, "lean")]
            whole += (f", BP/lean {bp['total_saved_bytes'] / le['total_saved_bytes']:.1f}x; lean step time "
                      f"{statistics.median(le['step_s']) / statistics.median(la['step_s']):.2f}x LANCE's")
        lines.append(whole)
    if "floor" in methods:
        lines.append("floor: LANCE with every rank 1 (energy threshold 1e-9): the forward, the input gradients and the "
                     "frozen layers' backward as in BP, the projection and the weight gradients as small as they get")
    if "lean" in methods:
        lines.append("lean: LANCE, frozen BatchNorm keeping no activation and ReLU one bit per element"
                     + (", the head's input compressed" if cfg.get("compress_head")
                                                     else "") + "; the gradients are unchanged")
    return "\n".join(lines)
