"""The book's table style (lance.book.render): formats, missing values, constant columns."""

import math

import pandas as pd
import pytest

from lance.book import render
from lance.book.render import MISSING, format_value, markdown_table, significant


@pytest.mark.parametrize("value, expected", [(24.5, "24.5"), (0.0336494, "0.0336"), (11.71875, "11.7"),
                                             (130.04, "130"), (0.0, "0"), (2152.3, "2,152"), (1.0, "1.00")])
def test_significant_gives_three_figures(value, expected):
    assert significant(value) == expected


@pytest.mark.parametrize("value, column, expected", [
    (64.58052, "acc", "64.58"), (52.47, "acc (paper)", "52.47"), (-1.234, "BWT", "-1.23"),
    (0.0336494, "MB", "0.0336"), (11.71, "MB (paper)", "11.71"), (0.05, "paper's MB", "0.05"),
    (0.7, "energy", "0.7"), (0.001212, "TFLOPs/iter", "0.00121"),
    (130.2, "BP / LANCE ×", "130.2×"), (50, "epochs", "50"), (None, "acc", MISSING),
    (float("nan"), "MB", MISSING), (math.nan, "layer", MISSING), ("", "layer", MISSING), (True, "default", "yes"),
    ("a|b", "name", "a\\|b"), ([32, 8, 1, 1], "ranks", "32 × 8 × 1 × 1")])
def test_format_value_follows_the_column(value, column, expected):
    assert format_value(value, column) == expected


def _rows(text):
    return [line for line in text.splitlines() if line.startswith("|")]


def test_table_is_numbered_captioned_and_moves_constant_columns_to_the_caption():
    table = pd.DataFrame({"model": ["mcunet-in2", "mcunet-in2"], "method": ["bp", "lance"],
                          "acc": [64.58052, 59.53], "acc (paper)": [52.47, None], "epochs": [50, 50]})
    text = markdown_table(table, "Our runs beside the paper's.", "tbl-x", keep=["model"])
    assert text.startswith("~~~{table} Our runs beside the paper's. In every row: epochs: 50.")
    assert ":name: tbl-x" in text and text.endswith("~~~")
    header, rule, *body = _rows(text)
    assert header == "| model | method | acc | acc (paper) |"  # epochs went into the caption, model was kept
    assert rule == "|:--|:--|--:|--:|"
    assert body == ["| mcunet-in2 | bp | 64.58 | 52.47 |", f"| mcunet-in2 | lance | 59.53 | {MISSING} |"]
    assert "nan" not in text.lower() and "None" not in text


def test_a_single_row_keeps_every_column_and_an_empty_table_says_what_to_run():
    one = pd.DataFrame({"acc": [1.0], "epochs": [10]})
    assert _rows(markdown_table(one, "C", "tbl-one"))[0] == "| acc | epochs |"
    assert markdown_table(one.iloc[:0], "C", "tbl-e", empty="Run `x` first.") == "Run `x` first."


def test_join_phrases():
    assert render.join_phrases(["a"]) == "a"
    assert render.join_phrases(["a", "", "b", "c"]) == "a, b and c"


def test_integer_columns_keep_their_format_beside_float_columns():
    table = pd.DataFrame({"task": [1, 2], "acc": [65.9, 56.0]})
    text = markdown_table(table, "C", "tbl-t", formats={"task": "{:d}"}, constant_to_caption=False)
    assert _rows(text)[2:] == ["| 1 | 65.90 |", "| 2 | 56.00 |"]


def test_a_profile_fills_in_only_what_the_reader_left_unset():
    from lance.book.profiles import sizes
    from lance.errors import LanceError

    table = {"smoke": {"batches": 2, "size": 8}, "book": {"batches": 8, "size": 32}}
    assert vars(sizes("smoke", table, batches=None)) == {"batches": 2, "size": 8}
    assert vars(sizes("smoke", table, batches=10)) == {"batches": 10, "size": 8}
    assert sizes("book", table, size=4).size == 4
    with pytest.raises(LanceError, match="unknown profile"):
        sizes("huge", table)
    with pytest.raises(LanceError, match="no profile sets"):
        sizes("book", table, epochs=3)


def test_code_names_in_headers_become_words():
    text = markdown_table(pd.DataFrame({"bp_bytes": [1], "share_positive": [0.5]}), "C", "tbl-h",
                          constant_to_caption=False)
    assert _rows(text)[0] == "| bp bytes | share positive |"


def test_the_spread_over_seeds_is_written_beside_the_mean():
    from lance.book.render import readable

    one_seed = pd.DataFrame({"method": ["bp", "lance"], "acc": [64.58, 59.53], "acc sd": [None, None]})
    assert readable(one_seed).columns.tolist() == ["method", "acc %"]  # no spread: the column is dropped
    assert readable(one_seed)["acc %"].tolist() == [64.58, 59.53]
    seeds = pd.DataFrame({"method": ["bp", "lance"], "acc": [64.58, 59.53], "acc sd": [0.314, None]})
    shown = readable(seeds)
    assert shown["acc %"].tolist() == ["64.58\u00a0±\u00a00.31", "59.53"]
    header, rule, *_ = _rows(markdown_table(shown, "C", "tbl-s", constant_to_caption=False))
    assert rule == "|:--|--:|"  # still right-aligned like numbers
