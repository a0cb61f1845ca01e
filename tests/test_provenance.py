"""lance.experiments.provenance: git commit, versions, hardware, and the book's status page."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lance.experiments import provenance as prov
from lance.book.status import status_page
from helpers import fake_executed_notebook
from lance.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_is_the_head_of_this_repository():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    commit = prov.git_commit(ROOT)
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit)
    assert head.startswith(commit.removesuffix("-dirty"))


def test_git_commit_outside_git_is_unknown(tmp_path):
    assert prov.git_commit(tmp_path) == "unknown"


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_marks_uncommitted_changes_dirty(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    clean = prov.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{7,40}", clean)
    (tmp_path / "f.txt").write_text("b")
    assert prov.git_commit(tmp_path) == clean + "-dirty"


def test_versions_report_the_installed_packages():
    v = prov.versions()
    assert v["torch"] == importlib.metadata.version("torch")
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(v) >= {"python", "torch", "torchvision", "numpy", "pandas",
                      "jupyter-book", "papermill", "nbval", "lance"}
    assert v["lance"] is not None


def test_versions_of_missing_packages_are_none(monkeypatch):
    monkeypatch.setitem(prov.PACKAGES, "nonexistent", "surely-not-installed-lance-xyz")
    assert prov.versions()["nonexistent"] is None


def test_hardware():
    hw = prov.hardware()
    assert hw["logical_cores"] >= 1
    assert hw["torch_threads"] == torch.get_num_threads()
    assert hw["cpu"]
    assert (hw["gpu"] is None) == (not torch.cuda.is_available())
    if Path("/proc/meminfo").exists():
        assert hw["memory_gib"] > 0


def test_provenance_record_is_json_and_keeps_config_seed_time():
    from dataclasses import dataclass

    @dataclass
    class Config:
        lr: float = 0.05
        epochs: int = 2

    rec = prov.provenance(config=Config(), seed=42, wall_time_s=1.5)
    assert rec["config"] == {"lr": 0.05, "epochs": 2}
    assert rec["seed"] == 42 and rec["wall_time_s"] == 1.5
    assert rec["versions"]["torch"] == importlib.metadata.version("torch")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", rec["timestamp_utc"])
    assert json.loads(json.dumps(rec)) == rec


def test_status_page_tabulates_executed_notebooks(tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    fake_executed_notebook(executed / "07_tiny.ipynb", duration=12.34)
    fake_executed_notebook(executed / "08_broken.ipynb", duration=3.0, exception=True)
    out = tmp_path / "book" / "status.md"

    assert status_page(executed, out) == out
    text = out.read_text()
    assert text.startswith("# Status and reproducibility")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| `")}
    assert set(rows) == {"`07_tiny`", "`08_broken`"}
    assert "| 12.3 |" in rows["`07_tiny`"] and "| ok |" in rows["`07_tiny`"]
    assert "2025-01-02 03:04:05" in rows["`07_tiny`"]
    assert "profile='smoke'" in rows["`07_tiny`"]
    assert "| failed |" in rows["`08_broken`"]
    assert f"| torch | {importlib.metadata.version('torch')} |" in text
    assert f"| Logical cores | {prov.hardware()['logical_cores']} |" in text
    assert prov.git_commit() in text
    assert not list(out.parent.glob(".*tmp"))  # the temporary file was renamed away


def test_status_page_marks_error_outputs_failed(tmp_path):
    path = tmp_path / "nb.ipynb"
    fake_executed_notebook(path, duration=1.0)
    nb = json.loads(path.read_text())
    nb["cells"][0]["outputs"] = [{"output_type": "error", "ename": "E", "evalue": "", "traceback": []}]
    path.write_text(json.dumps(nb))
    status_page(tmp_path, tmp_path / "status.md")
    assert "| failed |" in (tmp_path / "status.md").read_text()


def test_cli_status_page(tmp_path, capsys):
    fake_executed_notebook(tmp_path / "01_x.ipynb", duration=2.0)
    assert main(["status-page", str(tmp_path), str(tmp_path / "s.md")]) == 0
    assert "`01_x`" in (tmp_path / "s.md").read_text()


def test_a_dirty_tree_records_its_diff_and_every_record_its_command_line(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    run("add", "code.py")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert prov.git_diff(repo) is None
    (repo / "code.py").write_text("x = 2\n")
    diff = prov.git_diff(repo)
    assert "-x = 1" in diff["text"] and "+x = 2" in diff["text"] and not diff["truncated"]
    monkeypatch.setattr("sys.argv", ["lance", "finetune", "--epochs", "2"])
    assert prov.provenance()["command"].endswith("lance finetune --epochs 2")
