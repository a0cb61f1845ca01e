"""The book builds: every notebook executed by papermill, rendered by Jupyter Book with -W -n.

This runs `make book` (which re-executes only what changed) and checks the site. It is part of
`make test` (which sets LANCE_BOOK_TEST=1); a plain `pytest` run skips it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.environ.get("LANCE_BOOK_TEST") != "1",
                                reason="builds the whole book; run through `make test` (LANCE_BOOK_TEST=1)")


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_notebook_is_a_chapter():
    chapters = set(_toc_files())
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"notebooks/{nb.stem}" in chapters, f"{nb.name} is not in _toc.yml"


def test_book_builds_and_every_page_is_there():
    run = subprocess.run(["make", "--no-print-directory", "book"], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert run.returncode == 0, (run.stdout[-4000:] + "\n" + run.stderr[-4000:])
    html = ROOT / "_build" / "html"
    for page in _toc_files():
        assert (html / f"{page}.html").is_file(), f"{page}.html missing"
    status = (html / "book" / "status.html").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nb.stem in status, f"{nb.stem} missing from the status page"
    assert "Traceback" not in "".join(p.read_text() for p in (html / "notebooks").glob("*.html"))
