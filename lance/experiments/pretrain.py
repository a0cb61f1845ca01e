"""Pretraining for the paper's split-class protocol (its Table 1).

ImageNet weights for ResNet18/34 cannot be had on these machines, so the project follows the
protocol the paper itself uses for its ImageNet-scale experiment: pretrain on half of the
classes (split A), then fine-tune on the other half (split B) with ``lance.experiments.finetune``
(``pretrained=<the checkpoint>``, ``classes=(50, 100)``). ``pretrain(config)`` trains the whole
network from scratch on split A with the usual recipe (SGD with momentum, cosine schedule,
random crops and flips), checkpoints every epoch (runs resume), and writes the state_dict
plus a result record with its accuracy, the weights' sha256 and provenance. A record is never
replaced by one of other weights (see :func:`record_path`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from lance.errors import DivergedError, LanceError
from lance.experiments.checkpoints import check_checkpoint, load_checkpoint, save_checkpoint, save_weights
from lance.experiments.config import (dataset_names, finite_float, model_names, non_negative, one_of, option,
                                     positive, positive_float, seed_value, span, validate)

__all__ = ["PretrainConfig", "pretrain", "checkpoint_name", "record_path"]


def _classes(name: str, value) -> None:
    if value is None:
        raise LanceError("classes must be two whole numbers FIRST END (split A), got None.")
    span(name, value)


def _resolution(name: str, value) -> None:
    positive(name, value)
    if value < 8:
        raise LanceError(f"resolution must be at least 8 px (the random crops pad by 4/32 of the side), got {value}.")


@dataclass
class PretrainConfig:
    model: str = option("resnet18", "network trained from scratch", one_of(model_names))
    dataset: str = option("cifar100", "dataset", one_of(dataset_names))
    classes: tuple[int, int] = option((0, 50), "split A: train on classes [FIRST, END)", _classes)
    resolution: int = option(64, "input size in px (at least 8: the crops pad by 4/32 of the side)", _resolution)
    # from scratch at 64 px: already hours for ResNet18 on one CPU core
    epochs: int = option(15, "training epochs", positive)
    batch_size: int = option(128, "batch size", positive)
    lr: float = option(0.1, "peak learning rate of the one-cycle schedule", positive_float)
    weight_decay: float = option(5e-4, "weight decay", finite_float)
    seed: int = option(0, "seed", seed_value)
    train_limit: int = option(0, "use only this many images of split A (0: all)", non_negative)

    def __post_init__(self):
        if isinstance(self.classes, list):
            self.classes = tuple(self.classes)
        validate(self)


def checkpoint_name(cfg: PretrainConfig) -> str:
    return (f"{cfg.model}_{cfg.dataset}_c{cfg.classes[0]}-{cfg.classes[1]}_r{cfg.resolution}_ep{cfg.epochs}"
            f"_s{cfg.seed}" + (f"_n{cfg.train_limit}" if cfg.train_limit else ""))


def _batches(images: torch.Tensor, labels: torch.Tensor, cfg: PretrainConfig, epoch: int, train: bool):
    """Normalised batches at ``cfg.resolution``; in training, random crops (4/32 of the side
    as padding, reflect) and horizontal flips drawn from a per-epoch generator."""
    from lance.data import normalize

    n = len(labels)
    g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    order = torch.randperm(n, generator=g) if train else torch.arange(n)
    pad = max(1, cfg.resolution // 8)
    for start in range(0, n - (cfg.batch_size - 1 if train else 0), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        x = images[idx].permute(0, 3, 1, 2).float().div(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > cfg.resolution)
        if train:
            x = F.pad(x, (pad,) * 4, mode="reflect")
            dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
            x = x[:, :, dy:dy + cfg.resolution, dx:dx + cfg.resolution]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        yield normalize(x), labels[idx]


def _epoch(model, opt, sched, train, test, cfg: PretrainConfig, epoch: int,
           device: torch.device = torch.device("cpu")) -> dict:
    """One epoch of training, then the test accuracy; a NaN loss stops the run. The batches are
    drawn on the CPU (the same crops and flips on every device) and moved to ``device``."""
    t0 = time.perf_counter()
    model.train()
    losses = []
    for step, (x, y) in enumerate(_batches(train.images, train.labels, cfg, epoch, train=True)):
        x, y = x.to(device, non_blocking=True), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise DivergedError(f"the pretraining loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                                f"{step + 1} (lr {cfg.lr:g}); no weights were written. Lower --lr.")
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in _batches(test.images, test.labels, cfg, epoch, train=False):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
            "test_acc": 100.0 * correct / len(test.labels), "seconds": time.perf_counter() - t0}


def _pretrain_data(cfg: PretrainConfig, data_dir):
    """The training and test images of classes ``cfg.classes`` (at most ``cfg.train_limit``
    training images, a seeded draw kept in the split's order)."""
    from lance import data

    wanted = list(range(*cfg.classes))
    train = data.split_classes(data.load(cfg.dataset, "train", data_dir), wanted)
    test = data.split_classes(data.load(cfg.dataset, "test", data_dir), wanted)
    if cfg.train_limit:
        train = train.subset(torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(cfg.seed))
                             [:cfg.train_limit].sort().values)
    if not isinstance(train.images, torch.Tensor):
        raise LanceError("pretraining reads in-memory datasets (CIFAR, MNIST family); this one is file-based.")
    if len(train.labels) < cfg.batch_size:
        raise LanceError(f"{len(train.labels)} training images are fewer than one batch of {cfg.batch_size}; lower "
                         "--batch-size or raise --train-limit.")
    return train, test


def pretrain(cfg: PretrainConfig, *, data_dir=None, out_dir: str | os.PathLike = "_build/weights",
             results_dir: Optional[str | os.PathLike] = "data/results/pretrain", progress: bool = True,
             log=print, device: str | torch.device = "cpu") -> dict:
    """Train ``cfg.model`` from scratch on classes ``cfg.classes`` of ``cfg.dataset`` on ``device``;
    returns the result record (the state_dict goes to ``out_dir/<name>.pt``, saved from the CPU;
    never committed)."""
    from lance.models import zoo as models
    from lance.experiments.device import device_name, resolve_device
    from lance.experiments.provenance import provenance
    from lance.experiments.results import write_result

    dev = resolve_device(device)  # a missing GPU is refused before any data is read
    started = {**provenance(config=dataclasses.asdict(cfg), seed=cfg.seed), "device": device_name(dev)}
    t_start = time.perf_counter()
    name = checkpoint_name(cfg)
    out_dir = Path(out_dir)
    ckpt = out_dir / f"{name}.ckpt"
    check_checkpoint(ckpt, dataclasses.asdict(cfg))  # another run's checkpoint: refused before the data is read
    train, test = _pretrain_data(cfg, data_dir)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, num_classes=cfg.classes[1] - cfg.classes[0], pretrained=False).to(dev)
    steps = len(train.labels) // cfg.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    out_dir.mkdir(parents=True, exist_ok=True)
    history, first, before = [], 0, 0.0  # before: seconds spent by earlier processes on this run
    state = load_checkpoint(ckpt, dataclasses.asdict(cfg))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, first, before = state["history"], state["epoch"], state.get("elapsed", 0.0)
        log(f"resumed {ckpt.name} after epoch {first}")
    for epoch in range(first, cfg.epochs):
        history.append(_epoch(model, opt, sched, train, test, cfg, epoch, dev))
        if progress:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['train_loss']:.3f}, "
                f"test {history[-1]['test_acc']:.2f} % ({history[-1]['seconds']:.0f} s)")
        save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "history": history, "epoch": epoch + 1,
                               "elapsed": before + time.perf_counter() - t_start}, dataclasses.asdict(cfg))
    weights = out_dir / f"{name}.pt"
    save_weights(weights, {k: v.cpu() for k, v in model.state_dict().items()})
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    record = {
        "config": dataclasses.asdict(cfg),
        "metrics": {"accuracy": history[-1]["test_acc"], "history": history, "weights_file": str(weights),
                    "weights_sha256": digest, "train_images": int(len(train.labels)),
                    "test_images": int(len(test.labels))},
        "provenance": {**started, "wall_time_s": before + time.perf_counter() - t_start,
                       "wall_time_this_process_s": time.perf_counter() - t_start},
    }
    if results_dir:
        write_result(record_path(Path(results_dir), name, digest), record, overwrite=True)
    return record


def record_path(results_dir: Path, name: str, digest: str) -> Path:
    """Where the record of weights with sha256 ``digest`` goes: ``<name>.json``, unless a record of
    that name describes other weights (the same configuration trained again on another machine,
    say: fine-tuning runs that name those weights by their digest still need it), then
    ``<name>_<first 8 hex digits>.json``. A record of the same weights is replaced."""
    from lance.experiments.results import read_result

    plain = results_dir / f"{name}.json"
    if not plain.exists():
        return plain
    try:
        same = read_result(plain).get("metrics", {}).get("weights_sha256") == digest
    except (OSError, ValueError, AttributeError):  # unreadable: kept as it is, this record goes beside it
        same = False
    return plain if same else results_dir / f"{name}_{digest[:8]}.json"
