"""The chapters as a reader gets them, checked from their sources (fast; the build itself is
tests/test_book.py and the rendered pages tests/check_html.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FOLDED = {"remove-cell", "remove-input", "hide-input"}


def _cells(path):
    nb = json.loads(path.read_text())
    return [(c["cell_type"], "".join(c["source"]), set(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]


def _markdown(path):
    return "\n".join(s for kind, s, _ in _cells(path) if kind == "markdown")


def _code(path):
    return "\n".join(s for kind, s, _ in _cells(path) if kind == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_are_glued_and_closed(path):
    # glue(name, fig, display=False) leaves the inline backend's copy in the cell: the page shows it twice
    assert not re.search(r"\bglue\(\s*[\"']fig-", _code(path)), "glue figures with lance.book.render.glue_figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_numbered_reference_has_its_target_in_the_chapter(path):
    text, code = _markdown(path), _code(path)
    wanted = {m.group(2) or m.group(1) for m in re.finditer(r"\{numref\}`(?:([^`<]+?)|[^`<]*<([^`>]+)>)`", text)}
    defined = set(re.findall(r":(?:name|label): (\S+)", text))
    defined |= set(re.findall(r"glue_(?:table|figure)\(\s*[\"']([^\"']+)[\"']", code))
    assert wanted <= defined, f"no table, figure or equation named {sorted(wanted - defined)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_glued_tables_are_parsed_as_myst(path):
    text = _markdown(path)
    for block in re.findall(r"```\{glue:md\}[^\n]*\n(.*?)```", text, flags=re.S):
        assert ":format: myst" in block, "a glued table needs :format: myst to become a numbered table"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_chapter_ends_with_a_summary_and_exercises(path):
    heads = re.findall(r"^## (.+)$", _markdown(path), flags=re.M)
    assert heads[-2:] == ["Summary", "Exercises"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_holds_annotated_literals_with_comments(path):
    params = [s for kind, s, tags in _cells(path) if "parameters" in tags]
    assert len(params) == 1
    for line in params[0].splitlines():
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant), line
        assert "  # " in line, f"say what {line.split(':')[0]} is in a comment"


@pytest.mark.parametrize("stem", ["03_finetuning", "04_fidelity", "08_continual"])
def test_visible_code_is_under_a_third_of_the_page(stem):
    cells = _cells(ROOT / "notebooks" / f"{stem}.ipynb")
    visible = sum(len(s) for kind, s, tags in cells if kind == "code" and not tags & FOLDED)
    prose = sum(len(s) for kind, s, _ in cells if kind == "markdown")
    assert visible < (visible + prose) / 3


def _parameters(path):
    cell = next(s for kind, s, tags in _cells(path) if "parameters" in tags)
    return {node.target.id for node in ast.parse(cell).body}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_profile_overrides_a_parameter(path):
    # {"smoke": 2, "book": calibration_batches, "paper": 100}[profile] would ignore -p calibration_batches
    # outside the book profile: profiles fill in only what the reader left unset (lance.book.profiles.sizes)
    names = _parameters(path)
    for kind, source, tags in _cells(path):
        if kind != "code" or "parameters" in tags:
            continue
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict)
                    and isinstance(node.slice, ast.Name) and node.slice.id == "profile"):
                per_profile = [{n.id for n in ast.walk(v) if isinstance(n, ast.Name)} & names for v in node.value.values]
                partial = set.union(*per_profile) - set.intersection(*per_profile)
                assert not partial, f"only some profiles use the parameters {sorted(partial)}"


def _glued(notebook) -> dict:
    out = {}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                out[name] = output["data"].get("application/papermill.record/text/plain", "").strip("'\"")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stem, parameter, value, glued", [("01_hosvd", "calibration_batches", 3, "n_cal"),
                                                           ("02_lance_layer", "calibration_batches", 3, "n_cal_text")])
def test_a_parameter_takes_effect_in_the_smoke_profile(tmp_path, stem, parameter, value, glued):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / f"{stem}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{stem}.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                               parameters={"profile": "smoke", parameter: value}, progress_bar=False)
    assert _glued(json.loads(out.read_text()))[glued] == str(value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_table_and_figure_is_referred_to(path):
    text, code = _markdown(path), _code(path)
    made = set(re.findall(r"glue_(?:table|figure)\(\s*[\"']((?:tbl|fig)-[^\"']+)[\"']", code))
    referred = {m.group(2) or m.group(1) for m in re.finditer(r"\{numref\}`(?:([^`<]+?)|[^`<]*<([^`>]+)>)`", text)}
    assert made <= referred, f"never referred to with {{numref}}: {sorted(made - referred)}"
