"""The front page's "results at a glance": one row per claim of the paper that the book checks,
our number beside the paper's, a verdict computed from the two, and the chapter that shows it.

Every number comes from the committed result files (through :mod:`lance.book.tables` and
:mod:`lance.experiments.latency`) and from the paper's transcribed tables (:mod:`lance.book.paper`); nothing is
typed here. The verdicts follow fixed rules, stated once:

- an accuracy difference (BP minus LANCE, LANCE minus a baseline) is *reproduced* when ours is
  within :data:`TOLERANCE` points of the paper's, *partly* within :data:`PARTLY` points, and
  *not reproduced* beyond; where our difference has a spread over seeds, each bound is at least
  :data:`SPREADS` times that spread (a difference within seed noise is not counted against us);
- a memory ratio (BP's over LANCE's) is *reproduced* when ours is at least :data:`MEMORY_SHARE`
  of the paper's at every layer count, *partly* when LANCE at least stores less than BP;
- a ranking (LANCE the fastest) is *reproduced* when it holds at every layer count in every
  phase the paper names, *partly* when it holds for the total time at most layer counts;
- a claim no committed run checks is *not run here*, with the reason.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["TOLERANCE", "PARTLY", "MEMORY_SHARE", "SPREADS", "claims", "glance_markdown", "verdict_for_gap"]

#: points within which a difference of ours reproduces the paper's
TOLERANCE = 2.0
#: points within which it partly does
PARTLY = 5.0
#: the share of the paper's memory ratio ours must reach
MEMORY_SHARE = 0.5
#: a bound on a difference is at least this many times its spread over seeds
SPREADS = 2.0

_FT = "{doc}`Fine-tuning <../notebooks/03_finetuning>`"
_LAT = "{doc}`Latency <../notebooks/07_latency>`"
_CL = "{doc}`Continual learning <../notebooks/08_continual>`"


def verdict_for_gap(ours: list[float], paper: list[float], spreads: Optional[list[float]] = None) -> str:
    """The verdict for differences in accuracy points, ours against the paper's (pairwise);
    ``spreads`` are our differences' standard deviations over seeds (NaN: one seed), which widen
    each bound to at least :data:`SPREADS` times the spread."""
    spreads = [float("nan")] * len(ours) if spreads is None else spreads
    noise = [0.0 if sd != sd else SPREADS * sd for sd in spreads]
    if all(abs(o - p) <= max(TOLERANCE, n) for o, p, n in zip(ours, paper, noise)):
        return "reproduced"
    return "partly" if all(abs(o - p) <= max(PARTLY, n) for o, p, n in zip(ours, paper, noise)) else "not reproduced"


def _pairs(values: list[float], unit: str, digits: int = 1, spreads: Optional[list[float]] = None,
           seeds: Optional[list[int]] = None) -> str:
    if unit == "×":
        return " / ".join(f"{v:.{digits}f}×" for v in values)
    spreads = spreads or [float("nan")] * len(values)
    text = " / ".join(f"{v:.{digits}f}" + ("" if sd != sd else f" ± {sd:.{digits}f}")
                      for v, sd in zip(values, spreads)) + unit
    if seeds and max(seeds) > 1:  # mean ± standard deviation over that many seeds
        text += f" ({' / '.join(map(str, seeds)) if len(set(seeds)) > 1 else seeds[0]} seeds)"
    return text


def _layers_note(layers: list[int], epochs: list[int]) -> str:
    note = " / ".join(str(n) for n in layers) + " layers"
    short = sorted({e for e in epochs if e != 50})
    return note + (f"; ours at {', '.join(map(str, short))} epochs" if short else "")


def _last_epochs(table, by=("layers",)):
    """For each group, the row with the most epochs (the longest run we have)."""
    if not len(table):
        return table
    return table.sort_values("epochs").groupby(list(by), as_index=False).tail(1).sort_values(list(by))


def _memory_row(table, model: str, name: str) -> dict:
    from lance.book.tables import memory_ratios

    r = _last_epochs(memory_ratios(table[table.model == model]) if len(table) else table)
    claim = f"{name}: BP's activation memory over LANCE's (CIFAR-100)"
    if not len(r) or r["BP / LANCE × (paper)"].isna().any():
        return {"claim": claim, "ours": None, "paper": None, "verdict": "not run here", "where": _FT}
    ours, paper = list(r["BP / LANCE × (measured)"]), list(r["BP / LANCE × (paper)"])
    ok = all(o >= MEMORY_SHARE * p for o, p in zip(ours, paper))
    verdict = "reproduced" if ok else "partly" if all(o > 1 for o in ours) else "not reproduced"
    return {"claim": f"{claim}, {_layers_note(list(r.layers), [50])}", "ours": _pairs(ours, "×", 0),
            "paper": _pairs(paper, "×", 0), "verdict": verdict, "where": _FT}


def _gap_row(table, model: str, name: str, what: str, where: str = _FT) -> dict:
    from lance.book.tables import bp_lance_gap

    g = bp_lance_gap(table[table.model == model], ["layers", "epochs"]) if len(table) else table
    g = _last_epochs(g.dropna(subset=["gap (paper)"]) if len(g) else g)
    claim = f"{name}: BP's accuracy minus LANCE's ({what})"
    if not len(g):
        return {"claim": claim, "ours": None, "paper": None, "verdict": "not run here", "where": where}
    ours, paper, spreads = list(g.gap), list(g["gap (paper)"]), list(g["gap sd"])
    return {"claim": f"{claim}, {_layers_note(list(g.layers), list(g.epochs))}",
            "ours": _pairs(ours, " points", spreads=spreads, seeds=[int(n) for n in g.seeds]),
            "paper": _pairs(paper, " points"), "verdict": verdict_for_gap(ours, paper, spreads), "where": where}


def _baseline_row(table, model: str, name: str) -> dict:
    """LANCE's accuracy minus the better of HOSVD and ASI, at each layer count where the paper
    has LANCE and at least one of them."""
    ours, paper, layers, epochs = [], [], [], []
    mine = _last_epochs(table[table.model == model], ("layers", "method")) if len(table) else table
    for n, grp in (mine.groupby("layers") if len(mine) else []):
        by = grp.set_index("method")
        base = [m for m in ("hosvd", "asi") if m in by.index and not by.loc[m, ["acc", "acc (paper)"]].isna().any()]
        if "lance" not in by.index or not base or by.loc["lance", ["acc", "acc (paper)"]].isna().any():
            continue
        ours.append(by.loc["lance", "acc"] - max(by.loc[m, "acc"] for m in base))
        paper.append(by.loc["lance", "acc (paper)"] - max(by.loc[m, "acc (paper)"] for m in base))
        layers.append(int(n))
        epochs.append(int(by.loc["lance", "epochs"]))
    claim = f"{name}: LANCE's accuracy minus the better of HOSVD and ASI (CIFAR-100, Table 2)"
    if not ours:
        return {"claim": claim, "ours": None, "paper": None, "verdict": "not run here", "where": _FT}
    return {"claim": f"{claim}, {_layers_note(layers, epochs)}", "ours": _pairs(ours, " points"),
            "paper": _pairs(paper, " points"), "verdict": verdict_for_gap(ours, paper), "where": _FT}


def _latency_row(records: dict) -> dict:
    from lance.experiments.latency import PHASES, ratios

    claim = "LANCE's training step is the fastest of BP, HOSVD, ASI and LANCE (MCUNet, batch 128)"
    record = next((r for name, r in sorted(records.items()) if r["config"].get("hosvd_solver", "gram") == "gram"),
                  None)
    if record is None:
        return {"claim": claim, "ours": None, "paper": None, "verdict": "not run here", "where": _LAT}
    fastest = {phase: int((ratios(record, phase) > 1).all(axis=1).sum()) for phase in PHASES}
    n = len(ratios(record))
    ours = "; ".join(f"{phase} fastest at {k} of {n}" for phase, k in fastest.items())
    if all(k == n for k in fastest.values()):
        verdict = "reproduced"
    elif fastest["total"] * 2 >= n:
        verdict = "partly"
    else:
        verdict = "not reproduced"
    return {"claim": f"{claim}, 1 to {n} layers", "ours": ours,
            "paper": "forward, backward and total fastest at every layer count", "verdict": verdict, "where": _LAT}


def _continual_rows(main) -> list[dict]:
    rows = main[main.benchmark == "split_cifar100"].set_index("method") if len(main) else None
    claims = ["Split CIFAR-100: LANCE's ACC", "Split CIFAR-100: LANCE's ACC minus GPM's",
              "Split CIFAR-100: GPM's memory over LANCE's (between tasks; in training)"]
    if rows is None or not {"lance", "gpm"} <= set(rows.index):
        return [{"claim": c, "ours": None, "paper": None, "verdict": "not run here", "where": _CL} for c in claims]
    la, gp = rows.loc["lance"], rows.loc["gpm"]
    epochs = f"; ours at most {int(la['epochs (max/task)'])} epochs per task"
    out = [{"claim": claims[0] + epochs, "ours": f"{la.ACC:.2f} %",
            "paper": f"about {la['ACC (published)']:.0f} %", "verdict": verdict_for_gap([la.ACC], [la["ACC (published)"]]),
            "where": _CL}]
    ours_gap = la.ACC - gp.ACC
    paper_gap = la["ACC (published)"] - gp["ACC (published)"]
    out.append({"claim": claims[1] + " (GPM's published: GPM's own paper)" + epochs, "ours": f"{ours_gap:+.2f} points",
                "paper": f"{paper_gap:+.2f} points", "verdict": verdict_for_gap([ours_gap], [paper_gap]),
                "where": _CL})
    between = gp["memory between tasks (MiB)"] / la["memory between tasks (MiB)"]
    training = gp["training memory (MiB)"] / la["training memory (MiB)"]
    verdict = "reproduced" if min(between, training) > 1 else "partly" if max(between, training) > 1 else \
        "not reproduced"
    out.append({"claim": claims[2], "ours": f"{between:.1f}×; {training:.1f}×", "paper": "LANCE needs a fraction of GPM's",
                "verdict": verdict, "where": _CL})
    return out


_NOT_HERE = [
    ("Fine-tuning on CIFAR-10, Oxford-IIIT Pets, Flowers102 and CUB-200 (Table 2)",
     "not run: these datasets are not on the machines that build the book (their loaders are tested on files in "
     "the official formats)", _FT),
    ("ResNet18 and ResNet34 from ImageNet weights (Table 2)",
     "not run: no ImageNet weights here; the ResNets run the paper's split protocol (Table 1) on CIFAR-100", _FT),
    ("Split miniImageNet and the whole 5-Datasets (continual learning)",
     "not run: miniImageNet, CIFAR-10, SVHN and notMNIST are not here (5-Datasets runs on the 2 datasets found)", _CL),
]


def claims(finetune=None, continual=None, latency: Optional[dict] = None):
    """The table of claims (a DataFrame: claim, ours, paper, verdict, where). The arguments are
    :func:`lance.book.tables.finetune_results`, :func:`lance.book.tables.continual_results` and
    :func:`lance.experiments.latency.load_latency` (each read from ``data/results`` when left out)."""
    import pandas as pd

    from lance.experiments.latency import load_latency
    from lance.book import tables

    finetune = tables.finetune_results() if finetune is None else finetune
    continual = tables.continual_results() if continual is None else continual
    latency = load_latency() if latency is None else latency
    table2 = tables.finetune_table(finetune, dataset="cifar100")
    table1 = tables.finetune_table(finetune, dataset="cifar100", classes=(50, 100), resolution=64, paper_table="1",
                                   paper_dataset="imagenet-split-b")
    rows = [_memory_row(table2, "mcunet-in2", "MCUNet"), _memory_row(table2, "mobilenet_v2", "MobileNetV2"),
            _gap_row(table2, "mcunet-in2", "MCUNet", "CIFAR-100, Table 2"),
            _gap_row(table2, "mobilenet_v2", "MobileNetV2", "CIFAR-100, Table 2"),
            _gap_row(table1, "resnet18", "ResNet18", "split protocol, Table 1"),
            _gap_row(table1, "resnet34", "ResNet34", "split protocol, Table 1"),
            _baseline_row(table2, "mcunet-in2", "MCUNet"), _baseline_row(table2, "mobilenet_v2", "MobileNetV2"),
            _latency_row(latency)]
    rows += _continual_rows(tables.continual_main(tables.continual_table(continual)))
    rows += [{"claim": c, "ours": why, "paper": None, "verdict": "not run here", "where": where}
             for c, why, where in _NOT_HERE]
    return pd.DataFrame(rows, columns=["claim", "ours", "paper", "verdict", "where"])


def glance_markdown(table=None) -> str:
    """The front page's section: the claims as a numbered table, and how the verdicts are made."""
    from lance.book.render import markdown_table

    table = claims() if table is None else table
    counts = table.verdict.value_counts()
    said = ", ".join(f"{counts[v]} {v}" for v in ("reproduced", "partly", "not reproduced", "not run here")
                     if v in counts)
    shown = table.rename(columns={"claim": "Claim of the paper", "ours": "Ours", "paper": "The paper's",
                                  "verdict": "Verdict", "where": "Where"})
    caption = (f"The paper's claims that this book checks, ours beside the paper's ({said}), computed from the "
               "committed result files when the book was built.")
    rules = (f"A difference in accuracy is *reproduced* when ours is within {TOLERANCE:g} points of the paper's "
             f"and *partly* within {PARTLY:g} (where ours is a mean ± standard deviation over seeds, each bound is at "
             f"least {SPREADS:g} standard deviations); a memory ratio when ours reaches {MEMORY_SHARE:.0%} of the paper's at "
             "every layer count; a ranking when it holds at every layer count in every phase the paper names "
             "(*partly*: the total time at most of them). Our runs differ from the paper's in data, hardware, "
             "epochs and seeds where the chapters say so.")
    return markdown_table(shown, caption, "tbl-glance", constant_to_caption=False) + "\n\n" + rules + "\n"
