"""Benchmark: time and saved bytes of one training step, plain backprop against LANCE.

``python -m lance benchmark`` fine-tunes the last 2 and the last 4 conv layers (plus the
head) of ResNet18 at 224 px and batch 128, as the paper does, and prints, measured in one
run: the forward and backward time of one training step (median and range over repeats)
and the bytes autograd saves for the trainable layers, for BP and for LANCE at eps 0.7, and
their ratios. The frozen trunk's output is computed once and reused: the step timed is the
part of the network that training runs through (ResNet's ``layer4`` and head).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from .accounting import MIB, activation_memory, measured_bytes, saved_tensors
from .calibration import calibrate
from .layers import compress
from .selection import trainable_layers

__all__ = ["BenchmarkConfig", "run_benchmark", "format_report"]


@dataclass
class BenchmarkConfig:
    model: str = "resnet18"
    resolution: int = 224
    batch_size: int = 128
    energy: float = 0.7
    layer_counts: tuple[int, ...] = (2, 4)
    calibration_batches: int = 4
    repeats: int = 5
    seed: int = 0
    weights_dir: Optional[str] = None
    threads: Optional[int] = None


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

    @property
    def step_s(self) -> list[float]:
        return [f + b for f, b in zip(self.forward_s, self.backward_s)]


class _Tail(nn.Module):
    """ResNet's last stage and head, fed with the cached output of the stage before."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.layer4, self.avgpool, self.fc = resnet.layer4, resnet.avgpool, resnet.fc

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer4(x)), 1))


def _trunk(resnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r = resnet
    with torch.no_grad():
        return r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))))


def _time_steps(tail: nn.Module, x: torch.Tensor, target: torch.Tensor, repeats: int, result: StepResult) -> None:
    params = [p for p in tail.parameters() if p.requires_grad]
    for i in range(repeats + 1):  # the first step warms up and is not counted
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(tail(x), target)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i:
            result.forward_s.append(t1 - t0)
            result.backward_s.append(t2 - t1)


def run_benchmark(cfg: BenchmarkConfig, log=print) -> dict:
    """Run the benchmark; returns a dict with the config, per-setting results and provenance."""
    from . import data, models
    from .provenance import provenance

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    weights = models.weights_file(cfg.model, cfg.weights_dir)
    net = models.build(cfg.model, num_classes=100, pretrained=weights is not None, weights_dir=cfg.weights_dir)
    weights_note = str(weights) if weights else "none found: random initialisation (set LANCE_WEIGHTS_DIR)"
    log(f"model {cfg.model}, ImageNet weights: {weights_note}")
    net.eval()  # frozen BatchNorm, as in the paper's fine-tuning
    images, _ = data.sample_images(cfg.resolution)
    log(f"trunk output for {cfg.calibration_batches + 1} batches of {cfg.batch_size} real images ...")
    batches = [_trunk(net, b) for b in data.augmented_batches(images, cfg.batch_size, cfg.calibration_batches + 1,
                                                            seed=cfg.seed)]
    x, calib_inputs = batches[0], batches[1:]
    target = torch.randint(0, 100, (cfg.batch_size,), generator=torch.Generator().manual_seed(cfg.seed))
    tail = _Tail(net)
    in_size = tuple(x.shape[1:])
    results: list[StepResult] = []
    for n in cfg.layer_counts:
        names = trainable_layers(net, n)
        if not all(name.startswith("layer4.") for name in names):
            raise ValueError(f"the benchmark times ResNet's layer4 and head; {n} layers reach outside it.")
        base = copy.deepcopy(tail)
        for pname, p in base.named_parameters():
            p.requires_grad_(pname.startswith("fc.") or pname.rsplit(".", 1)[0] in names)
        cal = calibrate(base, calib_inputs, names, energy=cfg.energy, num_batches=cfg.calibration_batches)
        table = activation_memory(base, names, in_size, cfg.batch_size, calibration=cal)
        for method in ("bp", "lance"):
            model = compress(copy.deepcopy(base), cal) if method == "lance" else base
            res = StepResult(n, method)
            report = saved_tensors(model, x)
            res.saved_bytes = sum(measured_bytes(report, names).values())
            res.total_saved_bytes = int(report[report.kind != "parameter"].drop_duplicates("storage").bytes.sum())
            res.analytic_bytes = int(table[f"{method}_bytes"].sum())
            res.ranks = {name: list(cal[name].ranks) for name in names} if method == "lance" else {}
            _time_steps(model, x, target, cfg.repeats, res)
            results.append(res)
            log(f"  {n} layers, {method:5s}: step {statistics.median(res.step_s) * 1e3:8.1f} ms, "
                f"saved {res.saved_bytes / MIB:8.3f} MiB")
    wall = time.perf_counter() - start
    return {
        "config": {**asdict(cfg), "weights": weights_note},
        "results": [{**asdict(r), "step_s": r.step_s} for r in results],
        "provenance": provenance(config=asdict(cfg), seed=cfg.seed, wall_time_s=wall),
    }


def format_report(out: dict) -> str:
    """The printed figures: per setting, BP and LANCE side by side, with ratios."""
    cfg = out["config"]
    rows = {(r["layers"], r["method"]): r for r in out["results"]}
    lines = [
        f"LANCE benchmark: {cfg['model']} at {cfg['resolution']} px, batch {cfg['batch_size']}, "
        f"eps {cfg['energy']}, {cfg['calibration_batches']} calibration batches, "
        f"{out['provenance'].get('hardware', {}).get('torch_threads', '?')} threads",
        f"weights: {cfg['weights']}",
        f"times: median [min, max] of {cfg['repeats']} steps after one warm-up; the trunk before layer4 is "
        "frozen and its output reused",
        "",
        f"{'layers':>6} {'method':>6} {'forward ms':>22} {'backward ms':>22} {'step ms':>22} "
        f"{'saved MiB':>10} {'analytic MiB':>12} {'all saved MiB':>13}",
    ]
    fmt = lambda v: f"{statistics.median(v) * 1e3:7.1f} [{min(v) * 1e3:6.1f},{max(v) * 1e3:6.1f}]"  # noqa: E731
    for n in cfg["layer_counts"]:
        for method in ("bp", "lance"):
            r = rows[(n, method)]
            lines.append(f"{n:>6} {method:>6} {fmt(r['forward_s']):>22} {fmt(r['backward_s']):>22} "
                         f"{fmt(r['step_s']):>22} {r['saved_bytes'] / MIB:>10.3f} {r['analytic_bytes'] / MIB:>12.3f} "
                         f"{r['total_saved_bytes'] / MIB:>13.3f}")
    lines.append("")
    for n in cfg["layer_counts"]:
        bp, la = rows[(n, "bp")], rows[(n, "lance")]
        t = statistics.median(bp["step_s"]) / statistics.median(la["step_s"])
        m = bp["saved_bytes"] / la["saved_bytes"]
        lines.append(f"last {n} layers: BP/LANCE step time {t:.2f}x, saved bytes {m:.1f}x "
                     f"(LANCE ranks {la['ranks']})")
    return "\n".join(lines)
