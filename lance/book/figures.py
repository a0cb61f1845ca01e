"""Figures of the book, as functions (the notebooks call them; no logic lives in cells). Their
style is :func:`lance.book.render.style`."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lance.book.render import legend_below

__all__ = ["image_grid", "energy_curves", "accuracy_matrices", "latency_figure", "tradeoff_figure",
           "subspace_figure", "sweep_figure", "fidelity_figure", "angle_figure", "history_figure",
           "position_energy_figure"]


def image_grid(images: Tensor, titles: Optional[Sequence[str]] = None, columns: int = 10):
    """A grid of images in [0, 1], shape (N, 3, H, W)."""
    import matplotlib.pyplot as plt

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, images)):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def energy_curves(spectra: Sequence[Optional[Tensor]], labels: Sequence[str], energy: float):
    """Per mode: the eigenvalue share of each direction and the cumulative energy, with the
    threshold ``energy`` and the rank Eq. 3 picks marked."""
    import matplotlib.pyplot as plt

    from lance.core.hosvd import energy_rank

    shown = [(lab, s) for lab, s in zip(labels, spectra) if s is not None]
    fig, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 5.2), squeeze=False)
    for j, (lab, s) in enumerate(shown):
        s = s.double().clamp_min(0)
        share = s / s.sum()
        k = torch.arange(1, len(s) + 1)
        axes[0, j].semilogy(k, share.clamp_min(1e-12), lw=1.2)
        axes[0, j].set_title(f"{lab} mode (n = {len(s)})")
        axes[1, j].plot(k, torch.cumsum(share, 0), lw=1.5)
        r = energy_rank(s, energy)
        axes[1, j].axhline(energy, color="0.4", ls="--", lw=1)
        axes[1, j].axvline(r, color="C3", lw=1)
        axes[1, j].annotate(f"rank {r}", (r, 0.05), color="C3", xytext=(4, 0), textcoords="offset points")
        axes[1, j].set_ylim(0, 1.02)
        axes[1, j].set_xlabel("direction k")
    axes[0, 0].set_ylabel("energy share")
    axes[1, 0].set_ylabel("cumulative energy")
    fig.tight_layout()
    return fig


def latency_figure(record: dict, log_scale: bool = True):
    """The paper's Fig. 5: forward, backward and total time against the number of trainable
    layers, one line per method (median, with the interquartile range as a band)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from lance.experiments.latency import METHOD_LABELS, METHODS, PHASES, summary

    s = summary(record)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharex=True)
    for ax, phase in zip(axes, PHASES):
        for i, m in enumerate(m for m in METHODS if m in set(s.method)):
            d = s[(s.method == m) & (s.phase == phase)].sort_values("layers")
            ax.plot(d.layers, d.median_ms, "o-", ms=3.5, lw=1.4, color=f"C{i}", label=METHOD_LABELS[m])
            ax.fill_between(d.layers, d.q25_ms, d.q75_ms, color=f"C{i}", alpha=0.2, lw=0)
        ax.set(title=phase, xlabel="trainable layers", yscale="log" if log_scale else "linear")
        ax.set_xticks(sorted(set(s.layers)))
        if log_scale:
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].set_ylabel("time per step (ms)")
    fig.tight_layout()
    legend_below(fig, axes, ncol=4)
    return fig


def tradeoff_figure(table):
    """Accuracy against activation memory for the rows of a fine-tuning table
    (:func:`lance.book.tables.finetune_table`): colour for the method, marker for the model;
    ours filled, the paper's hollow; a bar of ± one standard deviation over seeds where a row
    has its ``acc sd``."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from lance.book.render import METHOD_NAMES
    from lance.book.paper import PAPER_MODEL_NAMES

    methods = [m for m in ("bp", "hosvd", "asi", "lance") if len(table) and m in set(table.method)]
    models = sorted(set(table.model)) if len(table) else []
    colour = {m: f"C{i}" for i, m in enumerate(methods)}
    marker = dict(zip(models, "osD^v"))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for _, r in table.iterrows() if len(table) else []:
        ax.scatter(r["MB"], r["acc"], color=colour[r.method], marker=marker[r.model], s=40)
        sd = r.get("acc sd", float("nan"))
        if sd == sd and sd is not None:  # several seeds: their spread
            ax.errorbar(r["MB"], r["acc"], yerr=sd, color=colour[r.method], capsize=3, lw=1)
        if r["MB (paper)"] == r["MB (paper)"] and r["MB (paper)"] is not None:
            ax.scatter(r["MB (paper)"], r["acc (paper)"], facecolors="none", edgecolors=colour[r.method],
                       marker=marker[r.model], s=40, linewidths=1.3)
    ax.set(xscale="log", xlabel="activation memory of the trained layers (MiB, log scale)",
           ylabel="top-1 accuracy (%)")
    handles = [Line2D([], [], ls="", marker="s", color=colour[m], label=METHOD_NAMES[m]) for m in methods]
    handles += [Line2D([], [], ls="", marker=marker[m], color="0.3", label=PAPER_MODEL_NAMES.get(m, m)) for m in models]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", label="ours"),
                Line2D([], [], ls="", marker="o", markerfacecolor="none", color="0.3", label="the paper's")]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)
    return fig


def accuracy_matrices(matrices: dict, annotate: bool = True, columns: int = 2):
    """One heat map per method (``matrices``: method -> accuracy matrix), sharing one colour
    scale and one colour bar; numbers in the cells only when ``annotate`` (small matrices)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from lance.book.render import METHOD_NAMES

    names = list(matrices)
    columns = min(columns, len(names)) or 1
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 0.8, 3.9 * rows), squeeze=False)
    image = None
    for ax, name in zip(axes.flat, names):
        r = np.asarray(matrices[name], dtype=float)
        shown = np.where(np.triu(np.ones_like(r, dtype=bool), k=1), np.nan, r) if r.shape[0] == r.shape[1] else r
        image = ax.imshow(shown, vmin=0, vmax=100, cmap="viridis")
        if annotate:
            for (i, j), v in np.ndenumerate(shown):
                if v == v:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=10,
                            color="white" if v < 60 else "black")
        ax.set(title=METHOD_NAMES.get(name, name), xlabel="task tested", ylabel="after training task")
        ax.set_xticks(range(r.shape[1]), [str(i + 1) for i in range(r.shape[1])])
        ax.set_yticks(range(r.shape[0]), [str(i + 1) for i in range(r.shape[0])])
        ax.grid(False)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="test accuracy (%)", shrink=0.8)
    return fig


def subspace_figure(first, second, memory, factor, seed: int = 0):
    """The first layer's input as colour vectors (a sample of pixels) of two tasks, with the
    memory grown from task 1 (red) and the factor calibrated for task 2 in its null space (blue)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 4.4))
    for k, (x, title) in enumerate([(first, "task 1"), (second, "task 2")]):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)
        pts = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:1500]]
        ax.scatter(*pts.t().numpy(), s=2, alpha=0.25, color="grey")
        scale = float(pts.norm(dim=1).quantile(0.95))
        for j in range(memory.shape[1]):
            ax.quiver(0, 0, 0, *(scale * memory[:, j]).tolist(), color="C3", linewidth=2.5,
                      label="memory M" if j == 0 else None)
        if k == 1:
            for j in range(factor.shape[1]):
                ax.quiver(0, 0, 0, *(scale * factor[:, j]).tolist(), color="C0", linewidth=2.5,
                          label="task-2 feature factor" if j == 0 else None)
        ax.set(xlabel="R", ylabel="G", zlabel="B", title=f"colour vectors of {title}")
    fig.tight_layout()
    legend_below(fig, ncol=2)
    return fig


def sweep_figure(sweep):
    """ACC against the memory kept between tasks for the runs of a continual sweep table
    (rows of :func:`lance.book.tables.continual_table`), LANCE's labelled with their thresholds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, marker in (("lance", "o"), ("gpm", "s")):
        part = sweep[sweep.method == method]
        ax.scatter(part["memory between tasks (MiB)"], part.ACC, marker=marker, s=50,
                   label={"lance": "LANCE", "gpm": "GPM"}[method])
        for _, r in part.iterrows():
            label = (f"ε {r.energy:g}, " if method == "lance" else "") + f"thr {r['memory threshold']}"
            ax.annotate(label, (r["memory between tasks (MiB)"], r.ACC), fontsize=9, xytext=(4, 4),
                        textcoords="offset points")
    top = sweep["memory between tasks (MiB)"].max() if len(sweep) else 1
    ax.set(xlim=(0, 1.3 * top), xlabel="memory between tasks (MiB)", ylabel="ACC (%)")
    fig.tight_layout()
    legend_below(fig, [ax], ncol=2)
    return fig


def fidelity_figure(per_layer):
    """The angle to the exact gradient (left) and the memory saved (right) of each compressed
    layer against the energy threshold (rows: model, energy, layer, angle, memory_ratio)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from lance.book.render import short_layer

    shown = per_layer.assign(layer=per_layer.layer.map(short_layer))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(shown, x="energy", y="angle", hue="model", style="layer", markers=True, ax=axes[0])
    sns.lineplot(shown, x="energy", y="memory_ratio", hue="model", style="layer", markers=True, ax=axes[1])
    axes[0].set(xlabel="energy threshold ε", ylabel="angle to the exact gradient (°)")
    axes[1].set(xlabel="energy threshold ε", ylabel="BP bytes / LANCE bytes", yscale="log")
    fig.tight_layout()
    legend_below(fig, axes, ncol=4)
    return fig


def angle_figure(curves):
    """The angle along training of each run of :func:`lance.book.tables.angle_curves`: the mean
    over its trained layers, and their range as a band."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7.5, 4))
    if len(curves):
        sns.lineplot(curves, x="epoch", y="angle", hue="run", errorbar=("pi", 100), ax=ax)
    ax.set(xlabel="epoch", ylabel="angle to the exact gradient (°)")
    fig.tight_layout()
    legend_below(fig, [ax], ncol=2)
    return fig


def history_figure(runs: dict):
    """Test accuracy after each epoch of the given runs (label -> a row of the fine-tuning
    results; None is left out)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, run in runs.items():
        if run is not None:
            hist = pd.DataFrame(run["metrics.history"])
            ax.plot(hist.epoch, hist.test_acc, marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    fig.tight_layout()
    legend_below(fig, [ax], ncol=3)
    return fig


def position_energy_figure(maps: dict):
    """Share (%) of a layer's input energy at each position of its feature map, one heat map
    per input set (title -> 2-D array)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.2), squeeze=False)
    for ax, (title, m) in zip(axes[0], maps.items()):
        sns.heatmap(100 * m, annot=True, fmt=".0f", cmap="rocket_r", cbar=False, ax=ax, annot_kws={"size": 10})
        ax.set(title=title, xlabel="width", ylabel="height")
    fig.tight_layout()
    return fig
