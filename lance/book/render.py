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
           "legend_below", "join_phrases"]

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


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, without an exponent for ordinary sizes."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _rule(column: str) -> Formatter:
    """The format of a column, from its name (units are in the headers)."""
    low = column.lower()
    if any(k in low for k in ("acc", "bwt", "%", "gap")):
        return "{:.2f}"
    if any(k in low for k in ("mib", " mb", "mb ", "tflops", "seconds", "hours")) or low in ("mb", "mib"):
        return significant
    if "×" in column or "ratio" in low:
        return lambda v: f"{v:.1f}×"
    return significant


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
    numeric = {c: all(isinstance(v, (int, float)) and not isinstance(v, bool) or _missing(v) for v in table[c])
               for c in shown}
    lines = [f"```{{table}} {text}", f":name: {name}", ":align: left", ""]
    lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in shown) + " |")
    lines.append("|" + "|".join("--:" if numeric[c] else ":--" for c in shown) + "|")
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(format_value(row[c], c, formats.get(c)) for c in shown) + " |")
    lines.append("```")
    return "\n".join(lines)


def glue_table(name: str, table, caption: str, **options) -> str:
    """Glue ``table`` as a numbered table (see :func:`markdown_table`); a markdown cell shows it
    with ``{glue:md}`` and ``:format: myst``, and refers to it as ``{numref}`name```. Returns the
    markdown."""
    from IPython.display import Markdown
    from myst_nb import glue

    text = markdown_table(table, caption, name, **options)
    glue(name, Markdown(text), display=False)
    return text


def glue_text(name: str, value) -> str:
    """Glue a number or a short phrase for ``{glue:text}`` in the prose (no output in the cell)."""
    from myst_nb import glue

    text = value if isinstance(value, str) else format_value(value, name)
    glue(name, text, display=False)
    return text


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
