"""Task-incremental continual learning on one trainer: LANCE, GPM, fine-tuning, multitask.

``continual(config)`` learns the tasks of a benchmark one after another (one head per task,
or one shared head for Permuted MNIST) with

* ``lance``: task 1 with plain BP; after every task each shared layer's memory ``M`` of
  input-feature directions grows (GPM's residual-energy criterion, threshold
  ``0.97 + 0.003 t``); before every later task Phase I runs with the input-feature factor
  chosen in the null space of ``M`` (:func:`lance.core.memory.calibrate_in_null_space`), and the
  task trains with LANCE layers (compressed activations, weight updates orthogonal to ``M``).
* ``gpm``: plain BP with every weight gradient projected off GPM's stored bases (patch space
  for convolutions), grown after every task by the same criterion.

``memory_space`` moves either method's memory to the other space: LANCE with ``patch`` keeps
GPM's patch bases and calibrates every convolution on its unfolded patches, its patch factor
in their null space (``lance.core.layers.LancePatchConv2d``).
* ``finetune``: plain sequential BP, nothing kept (the forgetting lower bound).
* ``multitask``: all tasks' data at once, one run (the joint-training upper bound).

The schedule is the recipe's: SGD (no momentum, no weight decay), lr 0.01, batch 64, the lr
halved (and the best weights restored) when the validation loss has not improved for 6
epochs, stop when lr < 1e-5 or after ``epochs``; the weights with the best validation loss are
kept. BatchNorm parameters learn on the first task only. After every task all tasks are
tested: the accuracy matrix, ACC and BWT. The run resumes after the last finished task from a
checkpoint, and writes one result file (JSON) with provenance.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.analysis.accounting import MIB, activation_memory, measured_bytes, saved_tensors
from lance.data.tasks import Benchmark, build_benchmark
from lance.models.continual import DEFAULT_MODEL, ContinualNet, build_cl_model
from lance.core.memory import ContinualMemory, calibrate_in_null_space, gpm_threshold, project_gradients
from lance.errors import LanceError
from lance.experiments.checkpoints import check_checkpoint, load_checkpoint, save_checkpoint
from lance.experiments.config import (finite_float, flag, fraction, non_negative, one_of, option, positive,
                                     positive_float, seed_value, validate)
from lance.experiments.results import check_writable
from lance.core.layers import compress, decompress

__all__ = ["ContinualConfig", "CL_METHODS", "CL_PROFILES", "profile_settings", "continual", "cl_result_name", "acc_bwt",
           "benchmark_defaults", "memory_space"]

CL_METHODS = ("lance", "gpm", "finetune", "multitask")


def _benchmark_names() -> tuple[str, ...]:
    from lance.data.tasks import BENCHMARKS
    return tuple(BENCHMARKS)


def _model_name(name: str, value) -> None:
    from lance.models.continual import CL_MODELS

    if value != "":  # "": the benchmark's network
        one_of(tuple(CL_MODELS))(name, value)


def _share(name: str, value) -> None:
    """A share in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise LanceError(f"{name} must be in [0, 1), got {value!r}.")


def _factor(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 1:
        raise LanceError(f"{name} must be a finite number > 1, got {value!r}.")


def _space(name: str, value) -> None:
    from lance.core.calibration import SPACES

    if value != "":  # "": the method's own
        one_of(SPACES)(name, value)


def _fractions(name: str, value) -> None:
    if not isinstance(value, (tuple, list)):
        raise LanceError(f"{name} must be a list of thresholds in (0, 1], got {value!r}.")
    for v in value:
        fraction(name, v)


@dataclass
class ContinualConfig:
    """One continual-learning run. Defaults: the recipe notes (GPM's Split CIFAR-100 setup)."""

    benchmark: str = option("split_cifar100", "the task sequence", one_of(_benchmark_names))
    method: str = option("lance", "lance | gpm | finetune | multitask", one_of(CL_METHODS))
    model: str = option("", "alexnet | resnet18_reduced | mlp (default: the benchmark's)", _model_name)
    epochs: int = option(200, "at most this many epochs per task (the schedule usually stops earlier)", positive)
    batch_size: int = option(64, "batch size", positive)
    lr: float = option(0.01, "learning rate", positive_float)
    lr_min: float = option(1e-5, "stop a task when the learning rate falls below this", finite_float)
    lr_factor: float = option(2.0, "divide the learning rate by this after `patience` epochs without progress",
                              _factor)
    patience: int = option(6, "epochs without a better validation loss before the rate falls", positive)
    energy: float = option(0.9, "LANCE's Phase I threshold for tasks 2.. (restricted to the null space)", fraction)
    calibration_batches: int = option(20, "LANCE's Phase I batches per task", positive)
    compress_batch: bool = option(True, "project the batch mode too", flag)
    threshold_base: float = option(0.97, "memory threshold after task 1 (it grows by threshold_step per task)",
                                   fraction)
    threshold_step: float = option(0.003, "growth of the memory threshold per task (GPM's schedule)", finite_float)
    layer_thresholds: tuple[float, ...] = option((), "per shared layer, in forward order: replaces threshold_base",
                                                 _fractions)
    memory_space: str = option("", "where a convolution's memory lives: 'feature' (its C input channels, LANCE's "
                               "reading) or 'patch' (its C*k*k unfolded patches, GPM's and the authors' code); "
                               "default: LANCE feature, GPM patch", _space)
    memory_examples: int = option(125, "training examples whose layer inputs grow the memory after a task",
                                  positive)
    tasks: int = option(0, "only the first n tasks (0: every task)", non_negative)
    val_fraction: float = option(0.05, "share of each task's training set held out for the schedule", _share)
    train_limit: int = option(0, "keep only this many training images per task (0: all)", non_negative)
    test_limit: int = option(0, "keep only this many test images per task (0: all)", non_negative)
    seed: int = option(42, "seed of the network, the data order and the calibration", seed_value)
    data_seed: int = option(0, "seed of the class split, the permutations and the validation hold-out", seed_value)

    def __post_init__(self):
        if isinstance(self.layer_thresholds, list):
            self.layer_thresholds = tuple(self.layer_thresholds)
        validate(self)  # when built, before any data is loaded

    def validate(self) -> "ContinualConfig":
        """Every field's check (before any data is loaded); returns the config."""
        return validate(self)


# Benchmark-specific settings: GPM's for Permuted MNIST (lr 0.01, batch 10, 5 epochs, no
# schedule, 300 examples for the memory, thresholds from 0.95).
_BENCHMARK_DEFAULTS = {
    "permuted_mnist": dict(epochs=5, batch_size=10, layer_thresholds=(0.95, 0.99, 0.99), threshold_step=0.0,
                           memory_examples=300, val_fraction=0.1, patience=1000),
}


def benchmark_defaults(benchmark: str) -> dict:
    """The settings in which a benchmark departs from :class:`ContinualConfig`'s defaults."""
    return dict(_BENCHMARK_DEFAULTS.get(benchmark, {}))


CL_PROFILES = {
    # a live demonstration in a minute or two
    "smoke": dict(tasks=3, epochs=2, train_limit=640, test_limit=200, calibration_batches=4),
    # the full benchmark with a shortened epoch budget (this CPU)
    "book": dict(epochs=10),
    # the paper's budget
    "paper": dict(),
}


def profile_settings(benchmark: str, profile: str) -> dict:
    """The config values of a run of ``benchmark`` under ``profile``: the benchmark's own defaults,
    then the profile's (``book`` only ever lowers the epoch budget)."""
    if profile not in CL_PROFILES:
        raise LanceError(f"unknown profile {profile!r}; choose one of {', '.join(CL_PROFILES)}.")
    values = benchmark_defaults(benchmark)
    for key, v in CL_PROFILES[profile].items():
        if profile == "book" and key == "epochs":
            v = min(v, values.get("epochs", ContinualConfig.epochs))
        values[key] = v
    return values


def memory_space(c: ContinualConfig) -> str:
    """The space of the run's memory: the one asked for, else the method's own (GPM: patch)."""
    return c.memory_space or ("patch" if c.method == "gpm" else "feature")


def cl_result_name(c: ContinualConfig) -> str:
    extra = ""
    if c.tasks:
        extra += f"_T{c.tasks}"
    if c.train_limit:
        extra += f"_n{c.train_limit}"
    if c.method == "lance":
        extra += f"_e{c.energy:g}"
    if c.method in ("lance", "gpm") and not c.layer_thresholds and c.threshold_base != ContinualConfig.threshold_base:
        extra += f"_th{c.threshold_base:g}"
    own = "patch" if c.method == "gpm" else "feature"
    if c.method in ("lance", "gpm") and c.memory_space not in ("", own):
        extra += f"_{c.memory_space}"  # only a space other than the method's own is named
    return f"{c.benchmark}_{c.method}_ep{c.epochs}{extra}_s{c.seed}.json"


def acc_bwt(matrix: np.ndarray) -> tuple[float, Optional[float]]:
    """ACC (mean final accuracy) and BWT (mean over the first T-1 tasks of final minus
    just-learned accuracy) of a T x T accuracy matrix (row i: after task i)."""
    r = np.asarray(matrix, dtype=float)
    t = r.shape[1]
    acc = float(r[-1].mean())
    if r.shape[0] != t or t < 2:
        return acc, None
    return acc, float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------
def _batches(x: Tensor, y: Tensor, batch_size: int, generator: Optional[torch.Generator], drop_last: bool):
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def _evaluate(model: ContinualNet, x: Tensor, y: Tensor, task: int, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy %) of task ``task``'s head."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in _batches(x, y, batch_size, None, False):
            out = model(xb, task)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return loss / max(1, len(y)), 100.0 * correct / max(1, len(y))


class _Schedule:
    """Halve the lr after ``patience`` epochs without a better validation loss (restoring the best
    weights), stop below ``lr_min``; remembers the best weights."""

    def __init__(self, c: ContinualConfig, model: nn.Module):
        self.c, self.model = c, model
        self.lr, self.best, self.wait = c.lr, math.inf, c.patience
        self.best_state = _copy_state(model)

    def step(self, val_loss: float, optimizer) -> bool:
        """Record an epoch; False when training should stop."""
        if val_loss < self.best:
            self.best, self.wait = val_loss, self.c.patience
            self.best_state = _copy_state(self.model)
            return True
        self.wait -= 1
        if self.wait > 0:
            return True
        self.lr /= self.c.lr_factor
        if self.lr < self.c.lr_min:
            return False
        self.wait = self.c.patience
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        self.model.load_state_dict(self.best_state)
        return True


def _thresholds(c: ContinualConfig, layers: list[str], t: int) -> dict:
    """Each layer's memory threshold after task ``t`` (counted from 0)."""
    if c.layer_thresholds:
        if len(c.layer_thresholds) != len(layers):
            raise LanceError(f"layer_thresholds has {len(c.layer_thresholds)} values for {len(layers)} layers "
                             f"({', '.join(layers)}).")
        return {n: gpm_threshold(t, b, c.threshold_step) for n, b in zip(layers, c.layer_thresholds)}
    return dict.fromkeys(layers, gpm_threshold(t, c.threshold_base, c.threshold_step))


def _fit(model: nn.Module, params: list, c: ContinualConfig, batches, step, validate, desc: str,
         progress: bool) -> list[dict]:
    """The training loop every method shares: SGD over ``batches()`` each epoch (``step(xb, yb)``
    computes the loss and its gradients, and returns the loss), ``validate()`` after each epoch
    for :class:`_Schedule`; ends with the best weights loaded. Returns the per-epoch history."""
    optimizer = torch.optim.SGD(params, lr=c.lr)
    schedule = _Schedule(c, model)
    history = []
    epochs = range(c.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=desc, leave=False)
    for epoch in epochs:
        model.train()
        total, n = 0.0, 0
        for xb, yb in batches():
            optimizer.zero_grad(set_to_none=True)
            loss = step(xb, yb)
            optimizer.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        val = validate()
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, n), **val, "lr": schedule.lr})
        if not schedule.step(val["val_loss"], optimizer):
            break
    model.load_state_dict(schedule.best_state)
    return history


def _copy_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _memory_batches(x: Tensor, n: int, generator: torch.Generator):
    idx = torch.randperm(len(x), generator=generator)[:n]
    return [x[idx]]


def _trainable(model: ContinualNet, task: int, layers: list[str], method: str) -> list[nn.Parameter]:
    """Task 1 (and multitask): everything. Later tasks: the shared layers and this task's head;
    BatchNorm stays as learned on task 1."""
    norm = {id(p) for p in model.norm_parameters()}
    params = []
    for p in model.parameters():
        p.requires_grad_(task == 0 or method == "multitask" or id(p) not in norm)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("heads.") and not model.shared_head and method != "multitask":
            if name.split(".")[1] != str(task):
                p.requires_grad_(False)
                continue
        params.append(p)
    return params


def _training_memory(model: ContinualNet, layers: list[str], input_shape, batch_size: int, calibration,
                     memory: Optional[ContinualMemory], method: str, x: Tensor, task: int) -> dict:
    """Activation bytes kept for the backward of the shared layers (analytic, and measured on one
    batch), plus what the update rule needs in memory during training (GPM's bases)."""
    if calibration is not None:  # layers frozen for this task keep nothing
        layers = [n for n in layers if n in calibration.layers]
    table = activation_memory(model, layers, tuple(input_shape), batch_size, calibration)
    analytic = float(table["lance_bytes" if calibration is not None else "bp_bytes"].sum())
    model.train()
    report = saved_tensors(model, x[:batch_size].clone(), task)  # a copy: a view would count the whole set
    measured = float(sum(measured_bytes(report, layers).values()))
    bases = memory.bytes() if (memory is not None and method == "gpm") else 0
    return {"activation_mb": analytic / MIB, "activation_mb_measured": measured / MIB,
            "bp_activation_mb": float(table["bp_bytes"].sum()) / MIB,
            "training_mb": (analytic + bases) / MIB}


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
def continual(config: ContinualConfig, *, out_dir: Optional[os.PathLike] = None, data_dir=None,
              checkpoint_dir: Optional[os.PathLike] = None, progress: bool = False,
              benchmark: Optional[Benchmark] = None, overwrite: bool = False,
              device: str | torch.device = "cpu") -> dict:
    """Run one continual-learning experiment on ``device``; returns the result record (and writes
    it under ``out_dir`` when given). ``benchmark`` may be passed already built (it must match
    ``config.benchmark`` and the limits). ``overwrite`` replaces a result and starts afresh."""
    from lance.experiments.device import device_name, resolve_device
    from lance.experiments.provenance import provenance
    from lance.experiments.results import write_result

    if not isinstance(config, ContinualConfig):
        raise LanceError(f"continual needs a ContinualConfig, got {type(config).__name__}.")
    c = config.validate()
    dev = resolve_device(device)  # a missing GPU is refused before any data is loaded
    name = cl_result_name(c)
    if out_dir is not None:  # before any data is loaded
        check_writable(Path(out_dir) / name, overwrite=overwrite)
    ckpt = Path(checkpoint_dir) / name.replace(".json", ".pt") if checkpoint_dir is not None else None
    if ckpt is not None and overwrite:
        ckpt.unlink(missing_ok=True)  # --force: from scratch
    check_checkpoint(ckpt, dataclasses.asdict(c), defaults=_CHECKPOINT_DEFAULTS)  # another run's: refused now
    start = time.time()
    started = {**provenance(c, seed=c.seed), "device": device_name(dev)}  # the code at the start
    if benchmark is None:
        benchmark = build_benchmark(c.benchmark, data_dir=data_dir, val_fraction=c.val_fraction, seed=c.data_seed,
                                    train_limit=c.train_limit, test_limit=c.test_limit)
    if benchmark.name != c.benchmark:
        raise LanceError(f"the benchmark passed is {benchmark.name!r} but the config names {c.benchmark!r}.")
    if c.tasks > len(benchmark.tasks):
        raise LanceError(f"--tasks {c.tasks}: {c.benchmark} has {len(benchmark.tasks)} tasks here.")
    tasks = [_on_device(t, dev) for t in (benchmark.tasks[:c.tasks] if c.tasks else benchmark.tasks)]
    fewest = min(len(t.train[1]) for t in tasks)
    if c.batch_size > fewest:  # before anything is trained or written
        raise LanceError(f"--batch-size {c.batch_size} is larger than the smallest task's {fewest} training images; "
                         "lower it (or raise --train-limit).")
    model_name = c.model or DEFAULT_MODEL[c.benchmark]
    model = build_cl_model(model_name, [t.classes for t in tasks], benchmark.input_shape,
                           shared_head=benchmark.shared_head, seed=c.seed).to(dev)
    layers = model.layers() + (["heads.0"] if model.shared_head else [])
    memory = ContinualMemory(space=memory_space(c)) if c.method in ("lance", "gpm") else None
    state, memory = _resume(ckpt, c, model, memory, started["commit"])
    memory = None if memory is None else memory.to(dev)  # a checkpoint loads onto the CPU
    _learn_sequence(model, tasks, layers, c, benchmark, memory, state, ckpt, progress)
    record = _record(c, model_name, layers, tasks, benchmark, memory, state, started)
    record["provenance"]["wall_time_this_process_s"] = time.time() - start
    if out_dir is not None:
        write_result(Path(out_dir) / name, record, overwrite=overwrite)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
    return record


def _on_device(task, device: torch.device):
    """``task`` with its images and labels on ``device`` (the task itself when already there)."""
    if device.type == "cpu":
        return task
    move = lambda pair: tuple(v.to(device) for v in pair)  # noqa: E731
    return dataclasses.replace(task, train=move(task.train), val=move(task.val), test=move(task.test))


_CHECKPOINT_DEFAULTS = {"memory_space": ""}  # fields added since older checkpoints were written


def _resume(ckpt, c: ContinualConfig, model: ContinualNet, memory, commit: str):
    """The run's state (and memory) from its checkpoint, or a fresh one; ``commit`` is appended."""
    state = {"done": 0, "matrix": [], "tasks": [], "elapsed": 0.0, "commits": []}
    saved = load_checkpoint(ckpt, dataclasses.asdict(c), defaults=_CHECKPOINT_DEFAULTS)
    if saved is not None:
        model.load_state_dict(saved["model"])
        if memory is not None:
            memory = ContinualMemory.from_state_dict(saved["memory"])
        state = saved["state"]
    state.setdefault("commits", []).append(commit)  # one per process that worked on the run
    return state, memory


def _learn_sequence(model, tasks, layers, c: ContinualConfig, benchmark, memory, state: dict, ckpt, progress) -> None:
    """Train the tasks not yet done, one after another (or all at once for multitask), growing the
    memory after each and checkpointing the state."""
    T = len(tasks)
    if c.method == "multitask":
        if state["done"] == 0:
            row, info = _train_multitask(model, tasks, layers, c, benchmark, progress)
            state["matrix"], state["tasks"], state["done"] = [row], [info], T
            state["elapsed"] = state.get("elapsed", 0.0) + info["wall_time_s"]
    for t in range(state["done"], T):
        info = _train_task(model, t, tasks, layers, c, benchmark, memory, progress)
        row = [_evaluate(model, *task.test, j, c.batch_size)[1] for j, task in enumerate(tasks)]
        if memory is not None and t < T - 1:
            g = torch.Generator().manual_seed(c.seed * 7919 + t)
            report = memory.update(model, _memory_batches(tasks[t].train[0], c.memory_examples, g), layers,
                                   threshold=_thresholds(c, layers, t), num_batches=1)
            info["memory_update"] = report
            info["memory_mb_after"] = memory.megabytes()
        info["test_accuracy"] = row
        state["matrix"].append(row)
        state["tasks"].append(info)
        state["done"] = t + 1
        state["elapsed"] = state.get("elapsed", 0.0) + info["wall_time_s"]
        if ckpt is not None:
            save_checkpoint(ckpt, {"model": model.state_dict(),
                                   "memory": None if memory is None else memory.state_dict(), "state": state},
                            dataclasses.asdict(c))
        if progress:
            print(f"task {t + 1}/{T}: accuracy on tasks so far "
                  + " ".join(f"{a:.1f}" for a in row[:t + 1]), flush=True)


def _record(c: ContinualConfig, model_name: str, layers, tasks, benchmark, memory, state: dict, started) -> dict:
    matrix = np.array(state["matrix"])
    acc, bwt = acc_bwt(matrix)
    per_task = state["tasks"]
    # what the method keeps between tasks: the memory as it stood while the last task trained
    memory_mb = 0.0 if memory is None else memory.megabytes()
    record = {
        "config": {**dataclasses.asdict(c), "model": model_name, "layers": layers, "num_tasks": len(tasks)},
        "metrics": {
            "acc": acc,
            "bwt": bwt,
            "accuracy_matrix": matrix.tolist(),
            "memory_mb": memory_mb,
            "memory_directions": None if memory is None else {k: list(v) for k, v in memory.sizes().items()},
            # peak over the continual phase (tasks 2..T; task 1 is plain BP for every method)
            **{key: max(i["memory"][key] for i in (per_task[1:] or per_task))
               for key in ("training_mb", "activation_mb", "activation_mb_measured", "bp_activation_mb")},
            "first_task_activation_mb": per_task[0]["memory"]["activation_mb"],
            "tasks": per_task,
            "task_names": [t.name for t in tasks],
            "skipped_datasets": list(benchmark.skipped),
        },
        "provenance": {**started, "wall_time_s": state.get("elapsed", 0.0), "commits": state["commits"]},
    }
    if len(set(state["commits"])) > 1:
        record["provenance"]["commit"] = record["provenance"]["git_commit"] = "+".join(dict.fromkeys(state["commits"]))
    return record


def _train_task(model: ContinualNet, t: int, tasks, layers, c: ContinualConfig, benchmark: Benchmark,
                memory: Optional[ContinualMemory], progress: bool) -> dict:
    start = time.time()
    task = tasks[t]
    torch.manual_seed(c.seed * 1000 + t)
    gen = torch.Generator().manual_seed(c.seed * 1000 + t)
    params = _trainable(model, t, layers, c.method)
    calibration = None
    info: dict = {"task": t, "name": task.name}
    if c.method == "lance" and t > 0:
        cal_gen = torch.Generator().manual_seed(c.seed * 31 + t)
        calibration = calibrate_in_null_space(
            model, _batches(*task.train, c.batch_size, cal_gen, True), layers, memory, energy=c.energy,
            num_batches=c.calibration_batches, compress_batch=c.compress_batch, full="skip")
        # a layer whose memory fills its input space has nothing left to learn in: it stays frozen
        frozen = {id(model.get_submodule(n).weight) for n in calibration.full}
        params = [p for p in params if id(p) not in frozen]
        for n in calibration.full:
            model.get_submodule(n).weight.requires_grad_(False)
        compress(model, calibration)
        info["ranks"] = {n: list(lc.ranks) for n, lc in calibration.layers.items()}
        info["frozen_full"] = list(calibration.full)
    try:
        info["memory"] = _training_memory(model, layers, benchmark.input_shape, c.batch_size, calibration,
                                          memory, c.method, task.train[0], t)
        drop_last = calibration is not None and c.compress_batch

        def step(xb, yb):
            loss = F.cross_entropy(model(xb, t), yb)
            loss.backward()
            if c.method == "gpm" and t > 0:
                project_gradients(model, memory)
            return loss

        def validate():
            val_loss, val_acc = _evaluate(model, *task.val, t, c.batch_size)
            return {"val_loss": val_loss, "val_accuracy": val_acc}

        history = _fit(model, params, c, lambda: _batches(*task.train, c.batch_size, gen, drop_last), step,
                       validate, f"task {t + 1}", progress)
    finally:
        if calibration is not None:
            decompress(model)
    info.update(epochs_run=len(history), history=history, wall_time_s=time.time() - start)
    return info


def _train_multitask(model: ContinualNet, tasks, layers, c: ContinualConfig, benchmark: Benchmark,
                     progress: bool) -> tuple[list[float], dict]:
    """All tasks at once: each sample is scored by its own task's head."""
    start = time.time()
    torch.manual_seed(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    x = torch.cat([t.train[0] for t in tasks])
    y = torch.cat([t.train[1] for t in tasks])
    tid = torch.cat([torch.full((len(t.train[1]),), i, device=y.device) for i, t in enumerate(tasks)])
    params = _trainable(model, 0, layers, "multitask")
    info: dict = {"task": "all", "name": "multitask"}
    info["memory"] = _training_memory(model, layers, benchmark.input_shape, c.batch_size, None, None,
                                      "multitask", x, 0)
    index = torch.arange(len(y))

    def step(ib, _):
        feats = model.features(x[ib])
        loss = feats.new_zeros(())
        for task in tid[ib].unique().tolist():
            sel = tid[ib] == task
            loss = loss + F.cross_entropy(model.head(task)(feats[sel]), y[ib][sel], reduction="sum")
        loss = loss / len(ib)
        loss.backward()
        return loss

    def validate():
        vals = [_evaluate(model, *t.val, i, c.batch_size) for i, t in enumerate(tasks)]
        sizes = [len(t.val[1]) for t in tasks]
        return {"val_loss": sum(v[0] * s for v, s in zip(vals, sizes)) / max(1, sum(sizes))}

    history = _fit(model, params, c, lambda: _batches(index, y, c.batch_size, gen, False), step, validate,
                   "multitask", progress)
    row = [_evaluate(model, *t.test, i, c.batch_size)[1] for i, t in enumerate(tasks)]
    info.update(epochs_run=len(history), history=history, wall_time_s=time.time() - start, test_accuracy=row)
    return row, info
