"""The book's tables: our result files beside the paper's reported numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lance.book.paper import PAPER_MODEL_NAMES, paper_finetuning
from lance.experiments.results import RESULTS_DIR, load_results

__all__ = ["finetune_results", "finetune_table", "seed_table", "step_limit_table", "benchmark_label", "calibration_cost_table", "selection_table", "probe_table", "paper_count_table",
           "hosvd_memory_table", "batch_compressed", "paper_lr", "lr_table", "weight_norm_history",
           "split_weights", "bp_lance_gap", "memory_ratios", "paper_setting", "batch_mode_table", "lr_gaps",
           "continual_default_runs", "final_accuracies", "find_run", "angle_curves", "ablation_table", "continual_main",
           "continual_results", "continual_table", "memory_by_layer", "memory_space_table", "memory_claims",
           "stored_activation_mb", "default_settings",
           "PAPER_MODEL_NAMES"]

#: how the paper names the models of this project
_METHOD_ORDER = {"bp": 0, "hosvd": 1, "asi": 2, "lance": 3}


def finetune_results(directory=None):
    """Every fine-tuning result file as a table (empty if there are none)."""
    import pandas as pd

    directory = directory or RESULTS_DIR / "finetune"
    try:
        table = load_results(directory)
    except FileNotFoundError:
        return pd.DataFrame()
    return table


def batch_compressed(results):
    """Runs that project the batch mode too (the paper's setting; files written before the
    option existed have no ``config.compress_batch`` column and did)."""
    import pandas as pd

    if "config.compress_batch" not in results:
        return pd.Series(True, index=results.index)
    return results["config.compress_batch"].fillna(True).astype(bool)


def paper_lr(results):
    """Runs at the paper's learning rate (0.05; files written before the learning-rate sweep
    all were). Runs at other rates are their own experiment (:func:`lr_table`)."""
    import pandas as pd

    from lance.experiments.finetune import DEFAULT_LR

    if "config.lr" not in results:
        return pd.Series(True, index=results.index)
    return (results["config.lr"].fillna(DEFAULT_LR) - DEFAULT_LR).abs() < 1e-12


def _unprobed(results, resolution: int = 0):
    """Runs at input size ``resolution`` (0: the model's native one) with the authors' script's
    optimiser and random flips: not one of the probes of MCUNet's accuracy (chapter 3)."""
    from lance.experiments.plan import PROBED  # the settings the probes change, at every other run's value

    return ((_value(results, "config.resolution", PROBED["resolution"]) == resolution)
            & (_value(results, "config.optimizer", PROBED["optimizer"]) == PROBED["optimizer"])
            & (_value(results, "config.flip", PROBED["flip"]).astype(bool) == PROBED["flip"]))


def _value(results, column: str, default):
    """A config column, ``default`` where a file predates it."""
    import pandas as pd

    if column not in results:
        return pd.Series(default, index=results.index)
    return results[column].where(results[column].notna(), default)


def _flag(results, column: str):
    """A boolean config column, False where a file predates it."""
    import pandas as pd

    if column not in results:
        return pd.Series(False, index=results.index)
    return results[column].fillna(False).astype(bool)


def paper_setting(results, dataset: str = "cifar100", batch_size: int = 128, classes=None, energy: float = 0.7,
                  calibration_batches: int = 100, any_lr: bool = False, compress_batch: bool = True,
                  skip_depthwise: bool = False, resolution: int = 0):
    """True for the runs of ``results`` in the paper's fine-tuning setting: the whole training
    set of ``dataset`` (or the split protocol's ``classes`` ``[first, end)``), ``batch_size``,
    energy threshold ``energy``, ``calibration_batches``, the batch mode projected
    (``compress_batch``), the same n layers for every method (unless ``skip_depthwise``: the
    authors' LANCE selection, which leaves depthwise convolutions frozen) and the paper's learning
    rate (unless ``any_lr``), the authors' script's optimiser, random flips, and input size
    ``resolution`` (0: the model's native one). The tables, the front page and the chapters
    select runs with this one function."""
    wanted = None if classes is None else list(classes)
    same_classes = results["config.classes"].map(lambda c: (None if c is None else list(c)) == wanted)
    projected = batch_compressed(results)
    mask = ((results["config.dataset"] == dataset) & (results["config.batch_size"] == batch_size)
            & (results["config.train_limit"] == 0) & same_classes
            & ((results["config.energy"] - energy).abs() < 1e-9)
            & (results["config.calibration_batches"] == calibration_batches)
            & (projected if compress_batch else ~projected)
            & (_flag(results, "config.skip_depthwise") == skip_depthwise) & _unprobed(results, resolution))
    return mask if any_lr else mask & paper_lr(results)


def _runs_at_any_lr(results, model: str, dataset: str, batch_size: int):
    """The full runs of one model, dataset and batch size at the paper's other settings (eps 0.7,
    100 calibration batches, the batch mode projected), whatever their learning rate, with an
    ``lr`` column (0.05 for files written before the rate was recorded)."""
    from lance.experiments.finetune import DEFAULT_LR

    sel = results[(results["config.model"] == model)
                  & paper_setting(results, dataset=dataset, batch_size=batch_size, any_lr=True)]
    return sel.assign(lr=sel["config.lr"].fillna(DEFAULT_LR) if "config.lr" in sel else DEFAULT_LR)


def weight_norm_history(results, model: str = "mcunet-in2", dataset: str = "cifar100", batch_size: int = 4):
    """Long form, one row per (run, trained layer, epoch) of the runs :func:`lr_table` covers that
    recorded their weight norms: the result file, method, layers, lr, epochs (of the config), layer,
    epoch (0: the pretrained weights) and ``ratio``, the layer's weight norm after that epoch over
    its pretrained norm."""
    import pandas as pd

    cols = ["file", "method", "layers", "lr", "epochs", "layer", "epoch", "ratio"]
    rows = []
    sel = _runs_at_any_lr(results, model, dataset, batch_size) if len(results) else results
    for _, run in sel.iterrows():
        start, history = run.get("metrics.weight_norm_initial"), run["metrics.history"]
        if not isinstance(start, dict) or not history or "weight_norm" not in history[-1]:
            continue
        for name, norm0 in start.items():
            for epoch, norm in [(0, norm0)] + [(h["epoch"], h["weight_norm"][name]) for h in history
                                               if "weight_norm" in h]:
                rows.append({"file": run["file"], "method": run["config.method"], "layers": int(run["config.layers"]),
                             "lr": float(run["lr"]), "epochs": int(run["config.epochs"]), "layer": name,
                             "epoch": epoch, "ratio": norm / norm0})
    return pd.DataFrame(rows, columns=cols)


def lr_table(results, model: str = "mcunet-in2", dataset: str = "cifar100", batch_size: int = 4):
    """One row per (method, layers, learning rate, epochs) of the full runs of one model and
    batch size (the paper's settings otherwise: eps 0.7, 100 calibration batches, the batch mode
    projected): the test accuracy, the training accuracy of the first epoch, and how far the
    trained weights moved: the largest ratio of a trained layer's weight norm after the last
    epoch to its pretrained norm, and that layer (runs written before the norms were recorded
    have none)."""
    import pandas as pd

    cols = ["method", "layers", "lr", "epochs", "runs", "acc", "epoch-1 train acc", "largest norm growth",
            "layer"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    sel = _runs_at_any_lr(results, model, dataset, batch_size)
    norms = weight_norm_history(results, model, dataset, batch_size)
    last = norms[norms.epoch == norms.groupby("file").epoch.transform("max")].groupby(["method", "layers", "lr",
                                                                                       "epochs"])
    rows = []
    for (method, layers, lr, epochs), grp in sel.groupby(["config.method", "config.layers", "lr", "config.epochs"]):
        growth, where = None, None
        key = (method, int(layers), float(lr), int(epochs))
        if key in last.groups:
            top = last.get_group(key).sort_values("ratio").iloc[-1]
            growth, where = float(top.ratio), top.layer
        rows.append({"method": method, "layers": int(layers), "lr": float(lr), "epochs": int(epochs), "runs": len(grp),
                     "acc": grp["metrics.accuracy"].mean(),
                     "epoch-1 train acc": grp["metrics.history"].map(lambda h: h[0]["train_acc"]).mean(),
                     "largest norm growth": growth, "layer": where})
    table = pd.DataFrame(rows, columns=cols)
    if len(table):
        table = table.sort_values(["layers", "lr", "method", "epochs"],
                                  key=lambda s: s.map(_METHOD_ORDER) if s.name == "method" else s,
                                  ascending=[True, False, True, True])
    return table.reset_index(drop=True)


def split_weights(results, pretrained):
    """Which pretraining each split-protocol run fine-tuned: one row per run of ``results``
    (:func:`finetune_results`) that started from a state_dict file, with the first 8 hex digits
    of that file's sha256 and the accuracy of the pretraining record (``pretrained``: the table
    of ``data/results/pretrain``) with that digest. Runs written before fine-tuning recorded the
    digest are matched by date: to the latest pretraining of the same weights file that started
    before them (``how``: "digest" or "by date")."""
    import re

    import pandas as pd

    cols = ["model", "method", "layers", "epochs", "acc", "weights", "how", "pretraining acc"]
    if not len(results) or "config.pretrained" not in results:
        return pd.DataFrame(columns=cols)
    runs = results[results["config.classes"].map(lambda c: c is not None)
                   & results["config.pretrained"].map(lambda p: isinstance(p, str) and p != "imagenet")]
    rows = []
    for _, run in runs.iterrows():
        found = re.search(r"sha256 ([0-9a-f]{64})", str(run.get("metrics.weights", "")))
        how, digest = "digest", found.group(1) if found else None
        if digest is None and len(pretrained):
            same = pretrained[(pretrained["config.model"] == run["config.model"])
                              & pretrained["metrics.weights_file"].map(
                                  lambda f: Path(str(f)).name == Path(run["config.pretrained"]).name)
                              & (pretrained["provenance.timestamp_utc"] < run["provenance.timestamp_utc"])]
            if len(same):
                how, digest = "by date", same.sort_values("provenance.timestamp_utc")["metrics.weights_sha256"].iloc[-1]
        record = pretrained[pretrained["metrics.weights_sha256"] == digest] if len(pretrained) and digest else []
        rows.append({"model": run["config.model"], "method": run["config.method"], "layers": int(run["config.layers"]),
                     "epochs": int(run["config.epochs"]), "acc": run["metrics.accuracy"],
                     "weights": digest[:8] if digest else None, "how": how if digest else "unknown",
                     "pretraining acc": record["metrics.accuracy"].iloc[0] if len(record) else None})
    table = pd.DataFrame(rows, columns=cols)
    if len(table):
        table = table.sort_values(["model", "layers", "method"],
                                  key=lambda s: s.map(_METHOD_ORDER) if s.name == "method" else s)
    return table.reset_index(drop=True)


def finetune_table(results, dataset: str = "cifar100", batch_size: int = 128, paper_table: str = "2",
                   paper_dataset: Optional[str] = None, classes: Optional[tuple[int, int]] = None,
                   energy: float = 0.7, calibration_batches: int = 100, resolution: int = 0):
    """One row per (model, method, layers, epochs): our accuracy (the mean over seeds, and its
    standard deviation ``acc sd`` when there are several), MB and TFLOPs beside the paper's, with
    the epochs and seeds behind ours. ``results`` is :func:`finetune_results`'s
    table; ``classes`` selects the split-protocol runs that fine-tuned on classes
    ``[first, end)`` (``None``: runs on the whole dataset). Only runs of the given energy
    threshold and number of calibration batches count (the paper's table setting; the ablations
    have :func:`ablation_table`) at input size ``resolution`` (0: the model's native one), and
    runs on a slice of the training set (``train_limit``) are left out."""
    import pandas as pd

    paper = paper_finetuning()
    paper = paper[(paper.table == paper_table) & (paper.dataset == (paper_dataset or dataset))
                  & (paper.batch_size == batch_size)]
    rows = []
    if len(results):
        sel = results[paper_setting(results, dataset=dataset, batch_size=batch_size, classes=classes, energy=energy,
                                    calibration_batches=calibration_batches, resolution=resolution)]
        keys = ["config.model", "config.method", "config.layers", "config.epochs"]
        for (model, method, layers, epochs), grp in sel.groupby(keys):
            p = paper[(paper.model == PAPER_MODEL_NAMES.get(model, model)) & (paper.method == method)
                      & (paper.layers == layers)]
            rows.append({
                "model": model, "method": method, "layers": int(layers),
                "acc": grp["metrics.accuracy"].mean(),
                # the spread over seeds (NaN for one seed: the table then says "seeds: 1" and no spread)
                "acc sd": grp.groupby("config.seed")["metrics.accuracy"].mean().std(ddof=1),
                "acc (paper)": p.acc.iloc[0] if len(p) else None,
                "MB": grp["metrics.activation_mb"].mean(), "MB measured": grp["metrics.activation_mb_measured"].mean(),
                "MB (paper)": p.mb.iloc[0] if len(p) else None,
                "TFLOPs/iter": grp["metrics.train_tflops"].mean(), "TFLOPs (paper)": p.tflops.iloc[0] if len(p) else None,
                "epochs": int(epochs), "seeds": int(grp["config.seed"].nunique()),
            })
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["model", "layers", "method", "epochs"],
                                  key=lambda s: s.map(_METHOD_ORDER) if s.name == "method" else s)
    return table.reset_index(drop=True)


def batch_mode_table(results, model: str = "mcunet-in2", dataset: str = "cifar100", batch_size: int = 4):
    """LANCE with the batch mode projected (the paper's setting) against LANCE with it left
    whole, per number of layers, at ``batch_size`` and otherwise the paper's setting: accuracy and
    MiB of each, and the difference (whole minus projected, in points)."""
    import pandas as pd

    cols = ["layers", "epochs", "acc (projected)", "acc (whole)", "difference, points", "MiB (projected)", "MiB (whole)"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    lance = (results["config.model"] == model) & (results["config.method"] == "lance")
    kinds = {flag: results[lance & paper_setting(results, dataset=dataset, batch_size=batch_size, compress_batch=flag)]
             for flag in (True, False)}
    rows = []
    for (layers, epochs), whole in kinds[False].groupby(["config.layers", "config.epochs"]):
        projected = kinds[True][(kinds[True]["config.layers"] == layers) & (kinds[True]["config.epochs"] == epochs)]
        if not len(projected):
            continue
        a, b = projected["metrics.accuracy"].mean(), whole["metrics.accuracy"].mean()
        rows.append({"layers": int(layers), "epochs": int(epochs), "acc (projected)": a, "acc (whole)": b,
                     "difference, points": b - a, "MiB (projected)": projected["metrics.activation_mb"].mean(),
                     "MiB (whole)": whole["metrics.activation_mb"].mean()})
    return pd.DataFrame(rows, columns=cols)


def lr_gaps(lr_runs, paper_table):
    """BP's accuracy minus LANCE's at each learning rate, per (batch, layers) of an
    :func:`lr_table` with a ``batch`` column, beside the paper's gap from ``paper_table`` (a
    :func:`finetune_table` with a ``batch`` column: the paper prints no rate for it)."""
    import pandas as pd

    rates = sorted(set(lr_runs.lr), reverse=True) if len(lr_runs) else []
    cols = ["batch", "layers"] + [f"gap at lr {lr:g}" for lr in rates] + ["gap (paper)"]
    paper = {(r["batch"], r["layers"]): r["gap (paper)"]
             for r in bp_lance_gap(paper_table, ["batch", "layers"]).to_dict("records")}
    rows = []
    for (batch, layers), grp in (lr_runs.groupby(["batch", "layers"]) if len(lr_runs) else []):
        row = {"batch": int(batch), "layers": int(layers)}
        for lr in rates:
            gap = bp_lance_gap(grp[grp.lr == lr], ["layers"])
            row[f"gap at lr {lr:g}"] = float(gap.gap.iloc[0]) if len(gap) else float("nan")
        row["gap (paper)"] = paper.get((batch, layers), float("nan"))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def bp_lance_gap(table, by):
    """BP's accuracy minus LANCE's, ours (``gap``) and the paper's (``gap (paper)``, NaN unless the
    paper has both), for each group ``by`` (a list of columns) of a :func:`finetune_table`-like
    table that has a BP and a LANCE row. ``gap sd`` is the gap's spread over seeds,
    ``sqrt(sd_BP^2 + sd_LANCE^2)`` (NaN unless both have two seeds or more), and ``seeds`` the
    fewer of the two methods' seed counts."""
    import math

    import pandas as pd

    rows = []
    for key, grp in (table.groupby(list(by)) if len(table) else []):
        g = grp.set_index("method")
        if {"bp", "lance"} <= set(g.index):
            paper = g.loc["bp", "acc (paper)"] - g.loc["lance", "acc (paper)"] if "acc (paper)" in g else float("nan")
            sds = [g.loc[m, "acc sd"] if "acc sd" in g else float("nan") for m in ("bp", "lance")]
            rows.append({**dict(zip(by, key)), "gap": g.loc["bp", "acc"] - g.loc["lance", "acc"],
                         "gap sd": math.sqrt(sds[0] ** 2 + sds[1] ** 2),  # NaN when either is
                         "seeds": int(min(g.loc[m, "seeds"] for m in ("bp", "lance"))) if "seeds" in g else 1,
                         "gap (paper)": float("nan") if pd.isna(paper) else float(paper)})
    return pd.DataFrame(rows, columns=list(by) + ["gap", "gap sd", "seeds", "gap (paper)"])


def _layer_part(name: str) -> str:
    """A layer's name as the selection table shows it, without the model's container:
    ``blocks.17.mobile_inverted_conv.depth_conv.conv`` -> ``17 depth_conv``,
    ``features.17.conv.2`` -> ``17 conv.2``, ``features.17.conv.0.0`` -> ``17 conv.0``, ``features.18.0`` -> ``18``."""
    parts = [p for p in name.split(".") if p not in ("mobile_inverted_conv", "blocks", "features")]
    if len(parts) > 1 and parts[-1] in ("conv", "0"):  # MCUNet's wrapper, torchvision's Conv2dNormActivation
        parts = parts[:-1]
    return parts[0] + (" " + ".".join(parts[1:]) if len(parts) > 1 else "")


def selection_table(results, dataset: str = "cifar100"):
    """LANCE with our layer selection (the last n convolutions, depthwise ones included) beside
    the authors' (the last n with ``groups == 1``), per (model, layers, epochs) that has a run of
    the authors' selection: the layers each trains, accuracy and activation memory (MiB as
    counted), beside the paper's LANCE accuracy and memory (its Table 2, in MB), and which of the
    two memories is nearer the paper's."""
    import pandas as pd

    cols = ["model", "layers", "epochs", "ours: trained", "authors: trained", "acc (ours)", "acc (authors)",
            "acc (paper)", "MiB (ours)", "MiB (authors)", "MB (paper)", "nearer the paper"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    lance = results[results["config.method"] == "lance"]
    runs = {flag: lance[paper_setting(lance, dataset=dataset, skip_depthwise=flag)] for flag in (False, True)}
    paper = paper_finetuning()
    paper = paper[(paper.table == "2") & (paper.dataset == dataset) & (paper.batch_size == 128)
                  & (paper.method == "lance")]
    rows = []
    keys = ["config.model", "config.layers", "config.epochs"]
    for (model, layers, epochs), theirs in runs[True].groupby(keys):
        ours = runs[False]
        mine = ours[(ours["config.model"] == model) & (ours["config.layers"] == layers)
                    & (ours["config.epochs"] == epochs) & ours["config.seed"].isin(theirs["config.seed"])]  # same seeds
        p = paper[(paper.model == PAPER_MODEL_NAMES.get(model, model)) & (paper.layers == layers)]
        names = {k: list(g["metrics.ranks"].iloc[0]) if len(g) else [] for k, g in (("ours", mine), ("authors", theirs))}
        mib = {k: float(g["metrics.activation_mb"].mean()) if len(g) else float("nan")
               for k, g in (("ours", mine), ("authors", theirs))}
        mb_paper = float(p.mb.iloc[0]) if len(p) else float("nan")
        gaps = {k: abs(v * 2 ** 20 / 1e6 - mb_paper) for k, v in mib.items()}  # the paper's MB are 10^6 bytes
        if names["ours"] == names["authors"]:
            nearer = "the same layers"
        elif any(g != g for g in gaps.values()):  # a run or the paper's figure is missing
            nearer = "—"
        else:
            nearer = "ours" if gaps["ours"] <= gaps["authors"] else "the authors'"
        rows.append({"model": model, "layers": int(layers), "epochs": int(epochs),
                     "ours: trained": ", ".join(_layer_part(n) for n in names["ours"]),
                     "authors: trained": ", ".join(_layer_part(n) for n in names["authors"]),
                     "acc (ours)": mine["metrics.accuracy"].mean() if len(mine) else float("nan"),
                     "acc (authors)": theirs["metrics.accuracy"].mean(),
                     "acc (paper)": float(p.acc.iloc[0]) if len(p) else float("nan"),
                     "MiB (ours)": mib["ours"], "MiB (authors)": mib["authors"], "MB (paper)": mb_paper,
                     "nearer the paper": nearer})
    return pd.DataFrame(rows, columns=cols)


def probe_table(results, baseline: str = "mcunet-in2", layers: int = 4, epochs: int = 10,
                dataset: str = "cifar100"):
    """BP's accuracy with one setting of the MCUNet runs changed at a time (``layers`` layers,
    ``epochs`` epochs, seed 42), beside the unchanged run: the checkpoint (the model zoo's other
    MCUNet and ProxylessNAS nets, each at its native resolution), the optimiser (plain SGD, as the
    paper's Table 4 prints it), the input resolution, and the flips (the only augmentation).
    ``change`` says what differs; ``vs unchanged`` is the difference in points."""
    import pandas as pd

    cols = ["change", "model", "px", "optimizer", "flips", "acc", "vs unchanged"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    family = results["config.model"].str.startswith(("mcunet", "proxyless"))
    sel = results[family & (results["config.method"] == "bp") & (results["config.layers"] == layers)
                  & (results["config.epochs"] == epochs) & (results["config.dataset"] == dataset)
                  & (results["config.batch_size"] == 128) & (results["config.train_limit"] == 0)
                  & (results["config.seed"] == 42) & results["config.classes"].map(lambda c: c is None)
                  & paper_lr(results) & ~_flag(results, "config.skip_depthwise")]
    sel = sel.assign(optimizer=_value(sel, "config.optimizer", "script"),
                     flips=_value(sel, "config.flip", True).astype(bool),
                     asked_px=_value(sel, "config.resolution", 0).astype(int),
                     px=_value(sel, "metrics.resolution", 0).astype(int))  # the size the run used
    rows = []
    for _, r in sel.iterrows():
        changes = [f"checkpoint {r['config.model']}"] if r["config.model"] != baseline else []
        changes += ["plain SGD (Table 4)"] if r.optimizer != "script" else []
        changes += ["no flips"] if not r.flips else []
        changes += [f"{r.asked_px} px"] if r.asked_px else []
        rows.append({"change": ", ".join(changes) or "none (Figure 3's BP run)", "model": r["config.model"],
                     "px": int(r.px or r.asked_px), "optimizer": r.optimizer,
                     "flips": "yes" if r.flips else "no", "acc": r["metrics.accuracy"]})
    table = pd.DataFrame(rows, columns=cols[:-1])
    if not len(table):
        return pd.DataFrame(columns=cols)
    base = table.loc[table.change.str.startswith("none"), "acc"]
    table["vs unchanged"] = table.acc - (base.iloc[0] if len(base) else float("nan"))
    order = table.change.str.startswith("none").map({True: 0, False: 1})
    return table.assign(_o=order).sort_values(["_o", "change"]).drop(columns="_o").reset_index(drop=True)


def paper_count_table(weights_dir=None):
    """The work per iteration counted as the paper counts it, computed from each architecture at
    its native resolution, beside every BP and HOSVD figure of the paper's Tables 1, 2 and 8 (one
    row per method, model, layers and batch size; Table 2's CIFAR-10 column stands for its
    datasets, which print the same figure). BP: forward MACs plus weight-gradient MACs of the
    trained layers. HOSVD: ``max(m, n)^2 min(m, n)`` over the mode unfoldings of each trained
    layer's input, plus its forward MACs (:func:`lance.analysis.accounting.paper_hosvd_tmacs`).
    Units of 10^12."""
    import pandas as pd

    from lance.analysis.accounting import activation_memory, paper_convention_tmacs, paper_hosvd_tmacs
    from lance.core.selection import trainable_layers
    from lance.errors import LanceError
    from lance.models import zoo

    names = {v: k for k, v in PAPER_MODEL_NAMES.items()}
    count = {"bp": paper_convention_tmacs, "hosvd": paper_hosvd_tmacs}
    paper = paper_finetuning()
    paper = paper[paper.method.isin(count) & paper.model.isin(names)
                  & paper.dataset.isin(["cifar10", "imagenet-split-b"]) & paper.tflops.notna()]
    paper = paper.drop_duplicates(["method", "table", "model", "layers", "batch_size"])
    rows, built = [], {}
    for r in paper.itertuples():
        name = names[r.model]
        if name not in built:
            try:
                built[name] = zoo.build(name, num_classes=1000, pretrained=False, weights_dir=weights_dir)
            except LanceError:  # MCUNet's architecture file is not here: its rows are left out
                built[name] = None
        if built[name] is None:
            continue
        model, px = built[name], zoo.resolution(name)
        table = activation_memory(model, trainable_layers(model, r.layers), (3, px, px), r.batch_size)
        rows.append({"method": r.method, "table": r.table, "model": name, "layers": r.layers,
                     "batch": r.batch_size, "px": px, "T (ours, the paper's count)": count[r.method](table),
                     "T (paper)": r.tflops})
    out = pd.DataFrame(rows)
    if len(out):  # agreement to the decimals the paper's figure has (a printed 0.000: below 0.0005)
        decimals = out["T (paper)"].map(lambda v: len(f"{v:f}".rstrip("0").split(".")[1]) if v else 3)
        out["same to the paper's decimals"] = [
            "yes" if abs(o - p) <= 0.5 * 10 ** -d + 1e-12 else "no"
            for o, p, d in zip(out["T (ours, the paper's count)"], out["T (paper)"], decimals)]
    return out


def hosvd_memory_table(results, dataset: str = "cifar100"):
    """Per-step HOSVD keeps a different amount at every step. One row per HOSVD run in the
    paper's setting: the mean over its steps (what the tables show as MiB), the first batch
    (measured with ``saved_tensors_hooks``), and the largest each layer kept, summed (recorded
    by runs from this version on; NaN before), beside the paper's HOSVD MB."""
    import pandas as pd

    cols = ["model", "layers", "epochs", "seed", "MiB mean over steps", "MiB first batch", "MiB largest",
            "MB (paper)"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    sel = results[(results["config.method"] == "hosvd") & paper_setting(results, dataset=dataset)]
    paper = paper_finetuning()
    paper = paper[(paper.table == "2") & (paper.dataset == dataset) & (paper.batch_size == 128)
                  & (paper.method == "hosvd")].set_index(["model", "layers"]).mb
    largest = _value(sel, "metrics.activation_mb_max", float("nan"))
    out = pd.DataFrame({"model": sel["config.model"], "layers": sel["config.layers"], "epochs": sel["config.epochs"],
                        "seed": sel["config.seed"], "MiB mean over steps": sel["metrics.activation_mb"],
                        "MiB first batch": sel["metrics.activation_mb_measured"], "MiB largest": largest})
    out["MB (paper)"] = [paper.get((PAPER_MODEL_NAMES.get(m, m), n), float("nan"))
                         for m, n in zip(out.model, out.layers)]
    return out.sort_values(["model", "layers", "epochs", "seed"]).reset_index(drop=True)[cols]


def calibration_cost_table(results):
    """What Phase I costs beside the training it serves: one row per LANCE or ASI run whose result
    file records its calibration time (``metrics.calibration_s``, from the first pass through the
    calibration batches to the swapped-in layers; files written before it was recorded are left
    out), with the run's wall time (every process that worked on it) and the calibration's share."""
    import pandas as pd

    cols = ["model", "method", "layers", "epochs", "seed", "calibration batches", "Phase I seconds", "run hours",
            "share of the run %"]
    if not len(results) or "metrics.calibration_s" not in results:
        return pd.DataFrame(columns=cols)
    sel = results[results["config.method"].isin(["lance", "asi"]) & results["metrics.calibration_s"].notna()]
    out = pd.DataFrame({"model": sel["config.model"], "method": sel["config.method"], "layers": sel["config.layers"],
                        "epochs": sel["config.epochs"], "seed": sel["config.seed"],
                        "calibration batches": sel["config.calibration_batches"],
                        "Phase I seconds": sel["metrics.calibration_s"].astype(float),
                        "run hours": sel["provenance.wall_time_s"].astype(float) / 3600})
    out["share of the run %"] = 100 * out["Phase I seconds"] / (out["run hours"] * 3600)
    return out.sort_values(["model", "method", "layers", "epochs", "seed"]).reset_index(drop=True)[cols]


STEP_LABELS = {"lance": "LANCE", "floor": "every rank 1"}


def benchmark_label(out: dict) -> str:
    """A benchmark's model as the book names it, with "split-protocol weights" where it started
    from a state_dict of ``python -m lance pretrain`` rather than from ImageNet's weights."""
    cfg = out["config"]
    name = PAPER_MODEL_NAMES.get(cfg["model"], cfg["model"])
    return name if cfg.get("pretrained", "imagenet") == "imagenet" else f"{name}, split-protocol weights"


def step_limit_table(benchmarks: dict):
    """Where a LANCE step's time goes, from :func:`lance.experiments.benchmark.load_benchmarks`:
    per model and number of layers, LANCE's and the rank-1 floor's forward, backward and step over
    BP's, in median time and in counted FLOPs (``NaN`` where a file did not count them)."""
    import pandas as pd

    from lance.experiments.benchmark import ratios_to_bp

    rows = []
    for out in benchmarks.values():
        for r in ratios_to_bp(out):
            if r["method"] not in STEP_LABELS:
                continue
            row = {"model": benchmark_label(out), "layers": r["layers"], "step": STEP_LABELS[r["method"]]}
            for phase in ("forward", "backward", "step"):
                row[f"{phase}: time / BP"] = r[phase]
                row[f"{phase}: FLOPs / BP"] = r.get(f"{phase}_flops", float("nan"))
            rows.append(row)
    cols = ["model", "layers", "step"] + [f"{p}: {k} / BP" for p in ("forward", "backward", "step") for k in ("time", "FLOPs")]
    return pd.DataFrame(rows, columns=cols)


def seed_table(results, model: str = "mcunet-in2", epochs: int = 50, dataset: str = "cifar100"):
    """One row per (method, layers) of ``model`` in the paper's setting at ``epochs``: the accuracy
    of each seed (a column per seed, NaN where that seed has no run), their mean, standard
    deviation and count, beside the paper's mean (the paper reports three seeds, 42, 123, 456).
    The seed columns are named ``seed <n> acc``."""
    import pandas as pd

    cols = ["method", "layers", "seeds", "acc", "acc sd", "acc (paper)"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    sel = results[(results["config.model"] == model) & (results["config.epochs"] == epochs)
                  & paper_setting(results, dataset=dataset)]
    table = finetune_table(sel, dataset=dataset)
    if not len(table):
        return pd.DataFrame(columns=cols)
    seeds = sorted(int(s) for s in sel["config.seed"].unique())
    per_seed = sel.groupby(["config.method", "config.layers", "config.seed"])["metrics.accuracy"].mean()
    rows = []
    for _, r in table.iterrows():
        rows.append({"method": r["method"], "layers": r["layers"],
                     **{f"seed {s} acc": per_seed.get((r["method"], r["layers"], s), float("nan")) for s in seeds},
                     "seeds": r["seeds"], "acc": r["acc"], "acc sd": r["acc sd"], "acc (paper)": r["acc (paper)"]})
    return pd.DataFrame(rows)


def memory_ratios(table):
    """BP's activation memory over LANCE's, for each (model, layers, epochs) of a
    :func:`finetune_table` that has both: as counted, as measured on the first batch, and the
    paper's (NaN where the paper has no LANCE figure)."""
    import pandas as pd

    cols = ["model", "layers", "epochs", "BP / LANCE × (counted)", "BP / LANCE × (measured)", "BP / LANCE × (paper)"]
    rows = []
    for (model, layers, epochs), grp in (table.groupby(["model", "layers", "epochs"]) if len(table) else []):
        by = grp.set_index("method")
        if {"bp", "lance"} <= set(by.index):
            paper = by.loc["bp", "MB (paper)"] / by.loc["lance", "MB (paper)"] if "MB (paper)" in by else float("nan")
            rows.append({"model": model, "layers": int(layers), "epochs": int(epochs),
                         cols[3]: by.loc["bp", "MB"] / by.loc["lance", "MB"],
                         cols[4]: by.loc["bp", "MB measured"] / by.loc["lance", "MB measured"],
                         cols[5]: float("nan") if pd.isna(paper) else float(paper)})
    return pd.DataFrame(rows, columns=cols)


def ablation_table(results, model: str = "mcunet-in2", dataset: str = "cifar100", layers: int = 2,
                   batch_size: int = 128):
    """LANCE's accuracy and memory for each (energy, calibration batches, epochs) that was run
    for one model, dataset and number of layers (the paper's Fig. 3), with the matching BP run's
    accuracy and memory (same epochs) for reference. Runs on a slice of the data are left out."""
    import pandas as pd

    cols = ["energy", "calibration batches", "epochs", "runs", "acc", "MB", "MB measured", "BP acc", "BP MB"]
    if not len(results):
        return pd.DataFrame(columns=cols)
    plain = results["config.classes"].map(lambda c: c is None)
    sel = results[(results["config.model"] == model) & (results["config.dataset"] == dataset)
                  & (results["config.layers"] == layers) & (results["config.batch_size"] == batch_size)
                  & (results["config.train_limit"] == 0) & plain & batch_compressed(results) & paper_lr(results)
                  & ~_flag(results, "config.skip_depthwise")  # the authors' selection is its own experiment
                  & _unprobed(results)]
    bp = sel[sel["config.method"] == "bp"].groupby("config.epochs")
    rows = []
    keys = ["config.energy", "config.calibration_batches", "config.epochs"]
    for (energy, n_cal, epochs), grp in sel[sel["config.method"] == "lance"].groupby(keys):
        ref = bp.get_group(epochs) if epochs in bp.groups else None
        rows.append({"energy": float(energy), "calibration batches": int(n_cal), "epochs": int(epochs),
                     "runs": len(grp), "acc": grp["metrics.accuracy"].mean(), "MB": grp["metrics.activation_mb"].mean(),
                     "MB measured": grp["metrics.activation_mb_measured"].mean(),
                     "BP acc": None if ref is None else ref["metrics.accuracy"].mean(),
                     "BP MB": None if ref is None else ref["metrics.activation_mb"].mean()})
    return pd.DataFrame(rows, columns=cols).sort_values(["epochs", "calibration batches", "energy"]).reset_index(drop=True)


_CL_METHOD_ORDER = {"lance": 0, "gpm": 1, "finetune": 2, "multitask": 3}


def continual_results(directory=None):
    """Every continual-learning result file as a table (empty if there are none)."""
    import pandas as pd

    directory = directory or RESULTS_DIR / "continual"
    try:
        return load_results(directory)
    except FileNotFoundError:
        return pd.DataFrame()


def stored_activation_mb(run) -> float:
    """What a continual run keeps per batch for the weight gradients of tasks 2..T, in MiB:
    for LANCE its cores alone (from the ranks each task recorded; the fixed factors are left
    out), for every other method the layer inputs (``metrics.activation_mb``). ``run`` is a
    row of :func:`continual_results`."""
    from math import prod

    from lance.errors import LanceError

    if run["config.method"] != "lance":
        return float(run["metrics.activation_mb"])
    tasks = run.get("metrics.tasks")
    if not isinstance(tasks, list) or not tasks:
        raise LanceError("this LANCE result file has no per-task ranks (metrics.tasks); rerun it with "
                         "`python -m lance continual` to record them.")
    later = tasks[1:] or tasks
    return max(sum(prod(r) for r in (t.get("ranks") or {}).values()) for t in later) * 4 / 2 ** 20


def default_settings(full, any_space: bool = False):
    """True for runs in the benchmark's default setting: LANCE at the default energy, the
    memory threshold(s) of the benchmark's defaults, each method's memory in its own space
    (LANCE's channels, GPM's patches; ``any_space``: in either)."""
    from lance.experiments.continual import ContinualConfig, benchmark_defaults

    flags = []
    for _, run in full.iterrows():
        d = {**ContinualConfig().__dict__, **benchmark_defaults(run["config.benchmark"])}
        method = run["config.method"]
        ok = method != "lance" or run["config.energy"] == d["energy"]
        if method in ("lance", "gpm"):
            per_layer = run.get("config.layer_thresholds")  # absent (NaN) in files that predate it
            layer = tuple(per_layer) if isinstance(per_layer, (list, tuple)) else ()
            ok = ok and run["config.threshold_base"] == d["threshold_base"] and layer == tuple(d["layer_thresholds"])
            ok = ok and (any_space or run_memory_space(run) == ("patch" if method == "gpm" else "feature"))
        flags.append(bool(ok))
    return flags


def run_memory_space(run):
    """The space a LANCE or GPM run kept its memory in (``feature`` or ``patch``; files written
    before the choice existed used the method's own), None for the other methods. ``run`` is a
    row of :func:`continual_results`."""
    method = run["config.method"]
    if method not in ("lance", "gpm"):
        return None
    given = run.get("config.memory_space")
    return given if isinstance(given, str) and given else ("patch" if method == "gpm" else "feature")


def continual_table(results):
    """One row per configuration of our runs over every task of a benchmark: ACC, BWT, the
    memory kept between tasks, the activations stored per batch and the peak training memory,
    the epoch budget, training images per task and seeds behind them, beside the published
    ACC / BWT (GPM's Table 1 for GPM and the bounds, the LANCE paper for LANCE; left empty
    where datasets of the benchmark were missing). ``default`` marks the benchmark's default
    setting (see :func:`lance.experiments.continual.benchmark_defaults`); the other rows are sweeps. Runs on
    the first tasks only (``config.tasks``) are left out."""
    import pandas as pd

    from lance.book.paper import paper_continual

    paper = paper_continual()
    rows = []
    if len(results):
        full = results[results["config.tasks"] == 0].copy()
        # settings that change the method: LANCE's threshold, the memory threshold, the epoch budget
        full["energy"] = full["config.energy"].where(full["config.method"] == "lance")
        per_layer = full.get("config.layer_thresholds", pd.Series([None] * len(full), index=full.index))
        threshold = [("/".join(f"{v:g}" for v in lt) if isinstance(lt, (list, tuple)) and len(lt) else f"{base:g}")
                     for lt, base in zip(per_layer, full["config.threshold_base"])]
        full["memory threshold"] = pd.Series(threshold, index=full.index).where(
            full["config.method"].isin(["lance", "gpm"]))
        full["memory space"] = [run_memory_space(run) for _, run in full.iterrows()]
        full["default"] = default_settings(full)
        full["default, any space"] = default_settings(full, any_space=True)
        full["stored"] = [stored_activation_mb(run) for _, run in full.iterrows()]
        skipped = full.get("metrics.skipped_datasets", pd.Series([None] * len(full), index=full.index))
        full["subset"] = [", ".join(s) if isinstance(s, list) and s else "" for s in skipped]
        keys = ["config.benchmark", "config.method", "energy", "memory threshold", "memory space", "config.epochs",
                "config.train_limit", "subset", "default", "default, any space"]
        for (bench, method, energy, threshold, space, epochs, limit, subset, default, any_space), grp in full.groupby(
                keys, dropna=False):
            p = paper[(paper.benchmark == bench) & (paper.method == method)]
            if subset:  # not the published benchmark
                p = p.iloc[:0]
            bwt = grp["metrics.bwt"].dropna()
            rows.append({
                "benchmark": bench, "method": method,
                "ACC": grp["metrics.acc"].mean(), "ACC (published)": p.acc.iloc[0] if len(p) else None,
                "BWT": bwt.mean() if len(bwt) else None, "BWT (published)": p.bwt.iloc[0] if len(p) else None,
                "memory between tasks (MiB)": grp["metrics.memory_mb"].mean(),
                "stored activations (MiB)": grp["stored"].mean(),
                "training memory (MiB)": grp["metrics.training_mb"].mean(),
                "energy": energy, "memory threshold": threshold,
                "memory space": space if isinstance(space, str) else None,
                "epochs (max/task)": int(epochs),
                "train images/task": int(limit) if limit else "all",
                "tasks": int(grp["config.num_tasks"].max()), "missing datasets": subset,
                "seeds": int(grp["config.seed"].nunique()), "default": bool(default),
                "default, any space": bool(any_space),
                "source": p.source.iloc[0] if len(p) else None,
            })
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["benchmark", "method", "default"],
                                  key=lambda s: s.map(_CL_METHOD_ORDER) if s.name == "method" else s,
                                  ascending=[True, True, False], kind="stable")
    return table.reset_index(drop=True)


def memory_by_layer(results, benchmark: str = "split_cifar100"):
    """Per method and shared layer of the default-setting runs on ``benchmark`` (every task):
    the memory's dimension n (input features, or C*k*k patches for GPM's convolutions), its
    directions k, and its MiB."""
    import pandas as pd

    rows = []
    if len(results):
        full = results[(results["config.benchmark"] == benchmark) & (results["config.tasks"] == 0)]
        full = full[default_settings(full)] if len(full) else full
        for _, run in full.iterrows():
            for layer, (n, k) in (run.get("metrics.memory_directions") or {}).items():
                rows.append({"method": run["config.method"], "layer": layer,
                             "n": n, "k": k, "MiB": n * k * 4 / 2 ** 20})
    return pd.DataFrame(rows)


SPACE_LABELS = {("lance", "feature"): "LANCE, channel memory (C)", ("lance", "patch"): "LANCE, patch memory (C·k·k)",
                ("gpm", "patch"): "GPM, patch memory (C·k·k)", ("gpm", "feature"): "GPM, channel memory (C)"}

_MEMORY_KINDS = {"memory between tasks (MiB)": "between tasks", "stored activations (MiB)": "stored activations",
                 "training memory (MiB)": "in training"}


def memory_space_table(every, benchmark: str = "split_cifar100"):
    """LANCE with its memory in the channel space and in the patch space, beside GPM, in the
    benchmark's default setting otherwise, on every training image: one row per (method, space)
    at the largest epoch budget that every one of them reached (else each at its largest).
    ``every`` is :func:`continual_table`'s result. Columns: ``run`` (a label), ``method``,
    ``memory space``, ACC, BWT, the three memories and ``epochs (max/task)``."""
    import pandas as pd

    cols = ["run", "method", "memory space", "ACC", "BWT", *_MEMORY_KINDS, "epochs (max/task)"]
    if not len(every):
        return pd.DataFrame(columns=cols)
    rows = every[(every.benchmark == benchmark) & every.method.isin(["lance", "gpm"]) & every["default, any space"]
                 & (every["train images/task"] == "all")]
    if not len(rows):
        return pd.DataFrame(columns=cols)
    budgets = [set(grp["epochs (max/task)"]) for _, grp in rows.groupby(["method", "memory space"])]
    common = set.intersection(*budgets)
    if common:
        rows = rows[rows["epochs (max/task)"] == max(common)]
    else:
        rows = rows.sort_values("epochs (max/task)").groupby(["method", "memory space"]).tail(1)
    rows = rows.assign(run=[SPACE_LABELS[(m, sp)] for m, sp in zip(rows.method, rows["memory space"])])
    order = list(SPACE_LABELS)
    rows = rows.assign(_o=[order.index((m, sp)) for m, sp in zip(rows.method, rows["memory space"])])
    return rows.sort_values("_o")[cols].reset_index(drop=True)


def memory_claims(space_table):
    """From :func:`memory_space_table`: for each of the three memories, GPM's over LANCE's with
    LANCE's memory in each space (above 1: LANCE keeps a fraction of GPM's). Rows: the memory;
    columns: ``GPM ÷ LANCE (channel)``, ``GPM ÷ LANCE (patch)``."""
    import pandas as pd

    by = {(r.method, r["memory space"]): r for _, r in space_table.iterrows()}
    gpm = by.get(("gpm", "patch"))
    rows = []
    for col, kind in _MEMORY_KINDS.items():
        row = {"memory": kind}
        for space, label in (("feature", "GPM ÷ LANCE (channel)"), ("patch", "GPM ÷ LANCE (patch)")):
            mine = by.get(("lance", space))
            row[label] = (float(gpm[col]) / float(mine[col]) if gpm is not None and mine is not None
                          and float(mine[col]) > 0 else None)
        rows.append(row)
    return pd.DataFrame(rows)


def continual_main(every):
    """The rows of :func:`continual_table` in each benchmark's default setting, one per
    (benchmark, method, training images per task): the run with the largest epoch budget."""
    if not len(every):
        return every
    full = every[every["default"]].drop(columns=["default", "default, any space"])
    return (full.sort_values("epochs (max/task)", ascending=False, kind="stable")
            .drop_duplicates(["benchmark", "method", "train images/task"]).sort_index().reset_index(drop=True))


def continual_default_runs(results, benchmark: str = "split_cifar100"):
    """The runs of each method over every task of ``benchmark`` on the whole training set in the
    default setting, one per method (the largest epoch budget), as rows of
    :func:`continual_results`, in the order of :data:`lance.experiments.continual.CL_METHODS`."""
    import pandas as pd

    if not len(results):
        return pd.DataFrame()
    runs = results[(results.get("config.benchmark") == benchmark) & (results.get("config.tasks") == 0)
                   & (results.get("config.train_limit") == 0)]
    runs = runs[default_settings(runs)] if len(runs) else runs
    if not len(runs):
        return runs
    runs = runs.sort_values("config.epochs").groupby("config.method").tail(1)
    return runs.sort_values("config.method", key=lambda s: s.map(_CL_METHOD_ORDER)).reset_index(drop=True)


def final_accuracies(runs):
    """Per task (rows), each run's test accuracy after the last task (the last row of its
    accuracy matrix), one column per method of ``runs`` (:func:`continual_default_runs`)."""
    import pandas as pd

    columns = {}
    for _, run in runs.iterrows():
        matrix = run["metrics.accuracy_matrix"]
        columns[run["config.method"]] = list(matrix[-1])
    table = pd.DataFrame(columns)
    table.insert(0, "task", range(1, len(table) + 1))
    return table


def find_run(results, model: str, method: str, layers: int, energy: float = 0.7, dataset: str = "cifar100"):
    """The result (a row of :func:`finetune_results`) of one fine-tuning run in the paper's setting
    but for ``energy`` (any learning rate recorded as the paper's), the longest if several; None
    when there is none."""
    if not len(results):
        return None
    sel = results[(results["config.model"] == model) & (results["config.method"] == method)
                  & (results["config.layers"] == layers) & paper_setting(results, dataset=dataset, energy=energy)]
    return None if sel.empty else sel.sort_values("config.epochs").iloc[-1]


def angle_curves(results, dataset: str = "cifar100"):
    """Long form, one row per (compressed run in the paper's Table 2 setting, epoch, layer): the
    angle between the weight gradient the run followed and the exact one, on the first batch of
    the epoch (the paper's Fig. 2 protocol)."""
    import pandas as pd

    from lance.book.render import METHOD_NAMES

    cols = ["run", "method", "epoch", "layer", "angle"]
    rows = []
    if len(results):
        runs = results[(results["config.method"] != "bp") & paper_setting(results, dataset=dataset)]
        for _, run in runs.iterrows():
            label = (f"{PAPER_MODEL_NAMES.get(run['config.model'], run['config.model'])} "
                     f"{METHOD_NAMES[run['config.method']]} {run['config.layers']} layers, {run['config.epochs']} epochs")
            for epoch, angles in enumerate(run["metrics.angle_deg"], start=1):
                rows += [{"run": label, "method": run["config.method"], "epoch": epoch, "layer": k, "angle": v}
                         for k, v in angles.items()]
    return pd.DataFrame(rows, columns=cols)
