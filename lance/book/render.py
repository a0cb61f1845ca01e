"""How the book shows numbers: one table style, one figure style, and the glue between them and
the text.

Tables are rendered as MyST markdown inside a ``{table}`` directive and glued with
:func:`glue_table`; a markdown cell pastes them with ``{glue:md}`` (format ``myst``), so every
table is numbered, captioned and can be referred to with ``{numref}``, and the theme gives all
of them the same padding. Values are formatted by column: accuracies to 2 decimals, MiB and
TFLOPs to 3 significant figures, an em-dash where a value is missing; columns that hold one
value in every row move into the caption, so the table fits the text column.

Figures are glued with :func:`glue_figure`, which also closes them: the inline backend then
shows no second copy in the cell's output.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

__all__ = ["MISSING", "format_value", "markdown_table", "glue_table", "glue_figure", "glue_text", "style",
           "legend_below", "join_phrases", "readable", "flatten", "short_layer", "significant", "METHOD_NAMES",
           "COLUMN_NAMES"]

#: what a table shows where a value is missing
MISSING = "—"

Formatter = Union[str, Callable[[object], str]]


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, pandas NA
    except (TypeError, ValueError):
        return False


def _is_spread(value) -> bool:
    """A mean with its spread written as text ("64.58 ± 0.31", the spaces no-break ones), or a bare
    number as text."""
    import re

    return isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?(\s±\s\d+(\.\d+)?)?", value) is not None


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, without an exponent for ordinary sizes."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _as_printed(value: float) -> str:
    """A number from the paper's tables, with the digits it was printed with."""
    return f"{value:g}"


def _rule(column: str) -> Formatter:
    """The format of a column, from its name (units are in the headers)."""
    low = column.lower()
    if any(k in low for k in ("acc", "bwt", "%", "gap", "points")):
        return "{:.2f}"
    if "×" in column or "ratio" in low:
        return lambda v: f"{v:.1f}×"
    if "paper" in low or "published" in low:
        return _as_printed
    if any(k in low for k in ("mib", " mb", "mb ", "tflops", "seconds", "hours")) or low in ("mb", "mib"):
        return significant
    return lambda v: f"{v:.4g}"


def format_value(value, column: str = "", fmt: Optional[Formatter] = None) -> str:
    """One cell of a book table as text."""
    if _missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " × ".join(format_value(v) for v in value) if value else MISSING
    if isinstance(value, str):
        return value.replace("|", "\\|") if value else MISSING
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, int):
        return str(value)
    fmt = fmt or _rule(column)
    if isinstance(value, float) and value.is_integer() and fmt is significant and abs(value) < 1e6:
        return str(int(value))
    return fmt.format(value) if isinstance(fmt, str) else fmt(value)


#: how the book names the methods
METHOD_NAMES = {"bp": "BP", "hosvd": "HOSVD", "asi": "ASI", "lance": "LANCE", "gpm": "GPM", "finetune": "fine-tuning",
                "multitask": "multitask"}

#: the book's column headers (with their units) for the columns of :mod:`lance.book.tables`
COLUMN_NAMES = {"acc": "acc %", "acc (paper)": "paper's acc %", "MB": "MiB", "MB measured": "MiB measured",
                "MB (paper)": "paper's MB", "TFLOPs/iter": "TFLOPs / iter", "TFLOPs (paper)": "paper's TFLOPs",
                "gap": "BP − LANCE, points", "gap (paper)": "paper's BP − LANCE", "epoch-1 train acc": "epoch-1 train acc %",
                "largest norm growth": "largest norm growth ×", "pretraining acc": "pretraining acc %",
                "BP acc": "BP acc %", "BP MB": "BP MiB"}


def short_layer(name: str) -> str:
    """A layer's name without the wrapper parts: ``blocks.17.mobile_inverted_conv.depth_conv.conv`` ->
    ``blocks.17 depth_conv``."""
    if not isinstance(name, str):
        return name
    parts = [p for p in name.split(".") if p != "mobile_inverted_conv"]
    if len(parts) > 1 and parts[-1] == "conv" and parts[-2].endswith("_conv"):  # MCUNet's wrapper
        parts = parts[:-1]
    return ".".join(parts[:2]) + (" " + ".".join(parts[2:]) if len(parts) > 2 else "")


def readable(table, columns: Optional[Mapping[str, str]] = None):
    """A table of :mod:`lance.book.tables` with the book's names: the paper's model and method
    names, short layer names and headers with units (:data:`COLUMN_NAMES`, then ``columns``).
    An ``acc sd`` column (the spread over seeds) is written into ``acc`` as "mean ± sd" once
    some row has one, so the table keeps its width."""
    from lance.book.paper import PAPER_MODEL_NAMES

    out = table.copy()
    if "acc sd" in out:  # the spread over seeds goes beside the mean, in the same column
        if out["acc sd"].notna().any():
            out["acc"] = [MISSING if _missing(a) else f"{a:.2f}" + ("" if _missing(sd) else f"\u00a0±\u00a0{sd:.2f}")
                          for a, sd in zip(out["acc"], out["acc sd"])]
        out = out.drop(columns="acc sd")
    if "model" in out:
        out["model"] = out["model"].map(lambda m: PAPER_MODEL_NAMES.get(m, m))
    if "method" in out:
        out["method"] = out["method"].map(lambda m: METHOD_NAMES.get(m, m))
    if "layer" in out:
        out["layer"] = out["layer"].map(short_layer)
    return out.rename(columns={**COLUMN_NAMES, **dict(columns or {})})


def flatten(table):
    """A table with its index as columns and one level of column names (``a b`` for a column
    ``(a, b)`` of a pivot), ready for :func:`markdown_table`."""
    out = table.copy()
    if getattr(out.columns, "nlevels", 1) > 1:
        out.columns = [" ".join(str(p) for p in col if str(p)) for col in out.columns]
    else:
        out.columns = [str(c) for c in out.columns]
    named = [n for n in (out.index.names or []) if n is not None]
    return out.reset_index() if named else out.reset_index(drop=True)


def _constant_columns(table, keep: Iterable[str]) -> list[str]:
    if len(table) < 2:
        return []
    keep = set(keep)
    out = []
    for col in table.columns:
        if col in keep:
            continue
        values = {format_value(v, col) for v in table[col]}
        if len(values) == 1:
            out.append(col)
    return out


def markdown_table(table, caption: str, name: str, *, formats: Optional[Mapping[str, Formatter]] = None,
                   keep: Sequence[str] = (), constant_to_caption: bool = True, empty: str = "") -> str:
    """``table`` (a DataFrame) as a numbered, captioned MyST table labelled ``name``.

    Columns whose value is the same in every row (other than those in ``keep``) are removed and
    said in the caption instead ("epochs: 50"). ``formats`` overrides the format of a column (a
    format string or a function of the value). An empty table gives ``empty`` as a sentence (for
    example, the command that writes its result files)."""
    formats = dict(formats or {})
    if not len(table):
        return empty or "No results for this table yet."
    constant = _constant_columns(table, keep) if constant_to_caption else []
    said = [f"{col}: {format_value(table[col].iloc[0], col, formats.get(col))}" for col in constant
            if format_value(table[col].iloc[0], col, formats.get(col)) != MISSING]
    shown = [c for c in table.columns if c not in constant]
    text = caption.rstrip()
    if said:
        text += (" " if text.endswith(".") else ". ") + "In every row: " + "; ".join(said) + "."
    numeric = {c: all(isinstance(v, (int, float)) and not isinstance(v, bool) or _missing(v) or _is_spread(v)
                      for v in table[c]) for c in shown}
    # a tilde fence: a backtick fence may not have backticks (`code`) in its caption line
    lines = [f"~~~{{table}} {text}", f":name: {name}", ":align: left", ""]
    # headers of code names (bp_bytes) are written as words, so that a narrow column wraps them
    lines.append("| " + " | ".join(str(c).replace("_", " ").replace("|", "\\|") for c in shown) + " |")
    lines.append("|" + "|".join("--:" if numeric[c] else ":--" for c in shown) + "|")
    # column by column: a row of mixed types would turn every int into a float
    cells = [[format_value(v, c, formats.get(c)) for v in table[c].tolist()] for c in shown]
    for row in zip(*cells):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("~~~")
    return "\n".join(lines)


def glue_table(name: str, table, caption: str, **options) -> None:
    """Glue ``table`` as a numbered table (see :func:`markdown_table`); a markdown cell shows it
    with ``{glue:md}`` and ``:format: myst``, and refers to it as ``{numref}`name```."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(markdown_table(table, caption, name, **options)), display=False)


def glue_text(name: str, value) -> None:
    """Glue a number or a short phrase for ``{glue:text}`` in the prose (no output in the cell)."""
    from myst_nb import glue

    glue(name, value if isinstance(value, str) else format_value(value, name), display=False)


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` for a ``{glue:figure}`` directive and close it, so that the cell shows no
    second copy of it."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)


def style() -> None:
    """The book's figure style: colour-blind-safe palette, fonts readable at the column width."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "legend.fontsize": 10, "axes.titlesize": 12, "axes.labelsize": 11,
                         "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.frameon": False})


def legend_below(fig, axes=None, ncol: int = 3, **kwargs):
    """One legend for the whole figure, below the panels (never over the data). Handles with
    the same label are drawn once."""
    axes = list(axes if axes is not None else fig.axes)
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not labels:
        return None
    return fig.legend([handles[lab] for lab in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                      ncol=ncol, **kwargs)


def join_phrases(phrases: Sequence[str], last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    phrases = [p for p in phrases if p]
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + f" {last} " + phrases[-1]
