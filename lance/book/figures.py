"""Figures of the book, as functions (the notebooks call them; no logic lives in cells). Their
style is :func:`lance.book.render.style`."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .render import legend_below

__all__ = ["image_grid", "energy_curves", "accuracy_matrix", "latency_figure", "tradeoff_figure"]


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

    from ..hosvd import energy_rank

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


def accuracy_matrix(matrix, title: str = "", ax=None, task_names: Optional[Sequence[str]] = None):
    """Heat map of a continual-learning accuracy matrix (row i: accuracies after task i)."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    r = np.asarray(matrix, dtype=float)
    mask = np.triu(np.ones_like(r, dtype=bool), k=1) if r.shape[0] == r.shape[1] else None
    if ax is None:
        _, ax = plt.subplots(figsize=(0.55 * r.shape[1] + 2, 0.45 * r.shape[0] + 1.5))
    sns.heatmap(r, mask=mask, annot=r.shape[1] <= 12, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax,
                cbar_kws={"label": "test accuracy (%)"})
    ax.set_xlabel("task tested")
    ax.set_ylabel("after training task")
    ax.set_xticklabels([str(i + 1) for i in range(r.shape[1])] if task_names is None else task_names, rotation=0)
    ax.set_yticklabels([str(i + 1) for i in range(r.shape[0])], rotation=0)
    ax.set_title(title)
    ax.grid(False)
    return ax


def latency_figure(record: dict, log_scale: bool = True):
    """The paper's Fig. 5: forward, backward and total time against the number of trainable
    layers, one line per method (median, with the interquartile range as a band)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from ..latency import METHOD_LABELS, METHODS, PHASES, summary

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
    ours filled, the paper's hollow."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .render import METHOD_NAMES
    from .tables import PAPER_MODEL_NAMES

    methods = [m for m in ("bp", "hosvd", "asi", "lance") if len(table) and m in set(table.method)]
    models = sorted(set(table.model)) if len(table) else []
    colour = {m: f"C{i}" for i, m in enumerate(methods)}
    marker = dict(zip(models, "osD^v"))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for _, r in table.iterrows() if len(table) else []:
        ax.scatter(r["MB"], r["acc"], color=colour[r.method], marker=marker[r.model], s=40)
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
