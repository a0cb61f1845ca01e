"""The paper-scale runs the book is built on, and which of them have a result file.

``PLAN`` lists, per table or figure of the paper, the runs whose result files the chapters
render, each with the command that writes it. :func:`plan_status` matches them against the
files under ``data/results/``: a run is done when a file with the planned settings exists
(whatever its number of epochs or seed: the tables say those), missing otherwise. The book's
status page shows the list, so a reader sees at a glance what has been regenerated here and
what has not, and how to run the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lance.errors import LanceError
from lance.experiments.finetune import DEFAULT_LR
from lance.experiments.results import RESULTS_DIR

__all__ = ["group_summary", "PlannedRun", "PLAN", "plan_status", "load_plan"]


@dataclass(frozen=True)
class PlannedRun:
    group: str  # the paper's table or figure the run belongs to
    kind: str  # finetune | continual | pretrain | latency: the subfolder of data/results
    match: dict = field(default_factory=dict)  # config values a result file must have
    command: str = ""

    def setting(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.match.items())


def _finetune(group: str, command: str, models, methods, layers=(2, 4), **match) -> list[PlannedRun]:
    """Runs of the default settings (eps 0.7, 100 calibration batches) of each model x layers x method."""
    match = {"energy": 0.7, "calibration_batches": 100, **match}
    return [PlannedRun(group, "finetune", {"model": m, "method": meth, "layers": n, **match}, command)
            for m in models for n in layers for meth in methods]


_SWEEP = "python -m lance sweep"
_SPLIT = "--classes 50 100 --resolution 64 --pretrained _build/weights/{model}_cifar100_c0-50_r64_ep15_s0.pt"
PLAN: list[PlannedRun] = [
    *_finetune("Table 2: CIFAR-100, ImageNet weights", f"{_SWEEP} --models mcunet-in2", ["mcunet-in2"],
               ["bp", "hosvd", "asi", "lance"], dataset="cifar100", batch_size=128, classes=None, seed=42),
    *_finetune("Table 2: CIFAR-100, ImageNet weights", f"{_SWEEP} --models mobilenet_v2 --epochs 10",
               ["mobilenet_v2"], ["bp", "hosvd", "asi", "lance"], dataset="cifar100", batch_size=128, classes=None,
               seed=42),
    PlannedRun("Table 1: split protocol (pretraining)", "pretrain", {"model": "resnet18", "classes": [0, 50]},
               "python -m lance pretrain --model resnet18"),
    PlannedRun("Table 1: split protocol (pretraining)", "pretrain", {"model": "resnet34", "classes": [0, 50]},
               "python -m lance pretrain --model resnet34"),
    # ResNet34 at 10 epochs: pretrained weights are never committed, so a machine without them trains
    # them again (ResNet18: 35 min on two cores here), and they and all 8 runs must fit in one working session
    *[run for model, epochs in (("resnet18", ""), ("resnet34", " --epochs 10")) for run in _finetune(
        "Table 1: split protocol (fine-tuning)", f"{_SWEEP} --models {model} {_SPLIT.format(model=model)}{epochs}",
        [model], ["bp", "hosvd", "asi", "lance"], dataset="cifar100", batch_size=128, classes=[50, 100],
        resolution=64)],
    # 112 px rather than MobileNetV2's native 224: a quarter of the cost (the paper has no such run)
    *_finetune("MobileNetV2 on Fashion-MNIST", f"{_SWEEP} --models mobilenet_v2 --dataset fashion_mnist "
               "--methods bp lance --epochs 10 --resolution 112", ["mobilenet_v2"], ["bp", "lance"],
               dataset="fashion_mnist", batch_size=128, classes=None, resolution=112),
    *[run for bs in (4, 8) for run in _finetune(
        "Tables 8-9: small batches", f"{_SWEEP} --models mcunet-in2 --methods bp lance --batch-sizes {bs} --epochs 10",
        ["mcunet-in2"], ["bp", "lance"], dataset="cifar100", batch_size=bs, classes=None)],
    *[PlannedRun("Figure 3: ablations (10 epochs)", "finetune",
                 {"model": "mcunet-in2", "method": method, "layers": 4, "energy": e, "calibration_batches": n,
                  "batch_size": 128, "classes": None, "epochs": 10},
                 f"{_SWEEP} --models mcunet-in2 --methods {method} --layers 4 --epochs 10 --energies {e}"
                 f" --calibration-batches {n}")
      for method, e, n in [("bp", 0.7, 100), ("lance", 0.7, 100), *[("lance", e, 100) for e in (0.5, 0.6, 0.8, 0.9)],
                           *[("lance", 0.7, n) for n in (1, 10, 50)]]],
    # chapter 3: is the fixed batch factor what costs LANCE accuracy at batch 4?
    *[PlannedRun("Batch 4: LANCE with the batch mode uncompressed", "finetune",
                 {"model": "mcunet-in2", "method": "lance", "layers": n, "energy": 0.7, "calibration_batches": 100,
                  "dataset": "cifar100", "batch_size": 4, "classes": None, "epochs": 10, "compress_batch": False},
                 f"{_SWEEP} --models mcunet-in2 --methods lance --layers {n} --batch-sizes 4 --epochs 10 "
                 "--no-compress-batch")
      for n in (2, 4)],
    # chapter 3: LANCE's batch-4 runs at the paper's lr 0.05 lose most of their accuracy (4 layers: all
    # of it); batches of 4 and 8 at a fifth of that rate, with BP at the same rate beside them
    *[run for bs in (4, 8) for run in _finetune(
        "Batches 4 and 8: a smaller learning rate", f"{_SWEEP} --models mcunet-in2 --methods bp lance "
        f"--batch-sizes {bs} --epochs 10 --lrs 0.01", ["mcunet-in2"], ["bp", "lance"], dataset="cifar100",
        batch_size=bs, classes=None, epochs=10, lr=0.01)],
    # chapter 4's diagnosis: does a higher threshold rescue MobileNetV2's 4-layer run?
    PlannedRun("Chapter 4: MobileNetV2, 4 layers at eps 0.9", "finetune",
               {"model": "mobilenet_v2", "method": "lance", "layers": 4, "energy": 0.9, "calibration_batches": 100,
                "dataset": "cifar100", "batch_size": 128, "classes": None, "epochs": 10},
               f"{_SWEEP} --models mobilenet_v2 --methods lance --layers 4 --epochs 10 --energies 0.9"),
    # the paper's three seeds are 42, 123 and 456: the MCUNet cells of Table 2 at 50 epochs, BP and LANCE first
    *[PlannedRun("Seeds 123 and 456: MCUNet, CIFAR-100", "finetune",
                 {"model": "mcunet-in2", "method": method, "layers": n, "energy": 0.7, "calibration_batches": 100,
                  "dataset": "cifar100", "batch_size": 128, "classes": None, "epochs": 50, "seed": seed},
                 f"{_SWEEP} --models mcunet-in2 --methods {method} --layers {n} --seeds {seed}")
      for method in ("bp", "lance", "asi", "hosvd") for n in (2, 4) for seed in (123, 456)],
    # the authors' LANCE selection: the last n convolutions with groups == 1 (chapter 3)
    *[PlannedRun("The authors' layer selection (depthwise frozen)", "finetune",
                 {"model": model, "method": "lance", "layers": n, "energy": 0.7, "calibration_batches": 100,
                  "dataset": "cifar100", "batch_size": 128, "classes": None, "epochs": epochs,
                  "skip_depthwise": True},
                 f"{_SWEEP} --models {model} --methods lance --layers {n} --skip-depthwise"
                 + (f" --epochs {epochs}" if epochs != 50 else ""))
      for model, n, epochs in (("mcunet-in2", 2, 50), ("mcunet-in2", 4, 50), ("mobilenet_v2", 4, 10))],
    # chapter 3: which difference from the paper's setting moves MCUNet's accuracy? BP, 4 layers, 10
    # epochs, one setting changed at a time; the unchanged run is Figure 3's BP run
    *[PlannedRun("MCUNet's accuracy: one setting changed (10 epochs)", "finetune",
                 {"model": model, "method": "bp", "layers": 4, "energy": 0.7, "calibration_batches": 100,
                  "dataset": "cifar100", "batch_size": 128, "classes": None, "epochs": 10, **change},
                 f"{_SWEEP} --models {model} --methods bp --layers 4 --epochs 10{flags}")
      for model, change, flags in (
          ("mcunet-in2", {"optimizer": "table4"}, " --optimizer table4"),
          ("mcunet-in2", {"flip": False}, " --no-flip"),
          ("mcunet-in2", {"resolution": 96}, " --resolution 96"),
          ("mcunet-in3", {}, ""), ("proxyless-w0.25", {}, ""), ("proxyless-w0.3", {}, ""),
          ("mcunet-in2", {"resolution": 128}, " --resolution 128"))],
    PlannedRun("Figure 5: latency", "latency", {"model": "mcunet-in2", "batch_size": 128, "hosvd_solver": "gram"},
               "python -m lance latency --out data/results/latency/mcunet-in2_bs128.json"),
    PlannedRun("Figure 5: latency", "latency", {"model": "mcunet-in2", "batch_size": 128, "hosvd_solver": "svd"},
               "python -m lance latency --hosvd-solver svd --out data/results/latency/mcunet-in2_bs128_hosvd-svd.json"),
    *[PlannedRun("Table 3: continual learning", "continual", {"benchmark": b, "method": m},
                 f"python -m lance continual --benchmark {b} --methods {m}")
      for b in ("split_cifar100", "permuted_mnist", "five_datasets") for m in ("lance", "gpm", "finetune", "multitask")],
    # chapter 8: LANCE with its memory in GPM's patch space (and GPM in LANCE's channels) at the book's
    # budget; then 50 epochs per task (the lr schedule fires; the paper's 200 are out of reach of these CPUs)
    *[PlannedRun("Chapter 8: each method's memory in the other space", "continual",
                 {"benchmark": "split_cifar100", "method": m, "memory_space": sp, "epochs": 10},
                 f"python -m lance continual --benchmark split_cifar100 --methods {m} --memory-space {sp} --epochs 10")
      for m, sp in (("lance", "patch"), ("gpm", "feature"))],
    *[PlannedRun("Split CIFAR-100 at 50 epochs per task", "continual",
                 {"benchmark": "split_cifar100", "method": m, "epochs": 50, **({"memory_space": sp} if sp else {})},
                 f"python -m lance continual --benchmark split_cifar100 --methods {m} --epochs 50"
                 + (f" --memory-space {sp}" if sp else ""))
      for m, sp in (("lance", ""), ("gpm", ""), ("lance", "patch"), ("multitask", ""))],
]


def _records(directory: Path) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # an unreadable file matches nothing; load_results reports it elsewhere
    return out


# fine-tuning settings that the probes of MCUNet's accuracy change, at the value every other run has
PROBED = {"optimizer": "script", "flip": True, "resolution": 0}

# the value a key had before result files recorded it
_DEFAULTS = {("latency", "hosvd_solver"): "gram"}


def _matches(record: dict, kind: str, match: dict) -> bool:
    cfg = record.get("config", {})
    if kind == "finetune" and cfg.get("train_limit"):  # a demonstration on a slice of the data
        return False
    if kind == "finetune" and cfg.get("compress_batch") is False and match.get("compress_batch") is not False:
        return False  # a run that leaves the batch mode uncompressed is not the paper's setting
    if kind == "finetune" and "lr" not in match and abs(cfg.get("lr", DEFAULT_LR) - DEFAULT_LR) > 1e-12:
        return False  # nor is a run at another learning rate
    if kind == "finetune" and cfg.get("skip_depthwise") and not match.get("skip_depthwise"):
        return False  # the authors' selection is planned apart from ours
    if kind == "finetune" and any(cfg.get(key, default) != default and key not in match
                                  for key, default in PROBED.items()):
        return False  # a run with another optimiser, resolution or augmentation is its own experiment
    if kind == "continual" and cfg.get("tasks"):  # a run of the first few tasks only
        return False
    if kind == "continual" and "memory_space" not in match and cfg.get("memory_space") not in (
            None, "", "patch" if cfg.get("method") == "gpm" else "feature"):
        return False  # a memory in the other space is its own experiment
    for key, want in match.items():
        have = cfg.get(key, _DEFAULTS.get((kind, key)))
        if isinstance(have, (list, tuple)):
            have = list(have)
        if isinstance(want, float) and isinstance(have, (int, float)):
            if abs(have - want) > 1e-9:
                return False
        elif have != want:
            return False
    return True


def load_plan(path: str | Path) -> list[PlannedRun]:
    """A plan of one's own: a JSON list of ``{"group", "kind", "match", "command"}``."""
    try:
        items = json.loads(Path(path).read_text())
        runs = [PlannedRun(i["group"], i["kind"], dict(i.get("match", {})), i["command"]) for i in items]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LanceError(f"cannot read the plan {path} ({type(err).__name__}: {err}); it must be a JSON list of "
                         '{"group", "kind", "match", "command"} objects.') from None
    import shlex

    for run in runs:
        if run.kind not in KINDS:
            raise LanceError(f"plan {path}: kind {run.kind!r} is not one of {', '.join(KINDS)}.")
        try:
            words = shlex.split(run.command)
        except ValueError as err:  # an unclosed quote, say
            raise LanceError(f"plan {path}: the command {run.command!r} cannot be split into words ({err}).") from None
        if words[:3] != ["python", "-m", "lance"]:
            raise LanceError(f"plan {path}: the command {run.command!r} must start with 'python -m lance'.")
    return runs


KINDS = ("finetune", "continual", "pretrain", "latency")


def _hours(record: dict) -> float:
    return float(record.get("provenance", {}).get("wall_time_s") or 0.0) / 3600


def plan_status(results_dir: Optional[str | Path] = None, plan: Optional[list[PlannedRun]] = None):
    """One row per planned run: its group, setting, the matching result files (with their
    epochs) or ``missing``, and the command that writes it."""
    import pandas as pd

    plan = PLAN if plan is None else plan
    root = Path(results_dir) if results_dir else RESULTS_DIR
    records = {kind: _records(root / kind) for kind in {run.kind for run in plan}}
    rows = []
    for run in plan:
        found = [(p, r) for p, r in records[run.kind] if _matches(r, run.kind, run.match)]
        files = ", ".join(p.name + (f" ({r['config']['epochs']} epochs)" if "epochs" in r.get("config", {}) else "")
                          for p, r in found)
        hours = sum(_hours(r) for _, r in found)
        gpu = sum(_hours(r) for _, r in found if str(r.get("provenance", {}).get("device", "cpu")).startswith("cuda"))
        rows.append({"group": run.group, "setting": run.setting(), "done": bool(found),
                     "result files": files or "missing", "command": run.command, "hours": hours,
                     "gpu hours": gpu})
    return pd.DataFrame(rows)


def group_summary(status=None):
    """Per group of the plan: runs done and planned, the wall-clock hours the done ones took
    (from their result files), and a rough estimate of the hours the missing ones need at the
    done ones' mean pace (None while none is done). Runs of one group can differ in size, and
    the hours are those of the machine that ran them."""
    import pandas as pd

    status = plan_status() if status is None else status
    rows = []
    for group, g in status.groupby("group", sort=False):
        done, planned = int(g.done.sum()), len(g)
        spent = float(g.hours.sum())
        rows.append({"group": group, "done": done, "planned": planned, "hours spent": spent,
                     "hours left (estimate)": spent / done * (planned - done) if done else None})
    return pd.DataFrame(rows)
