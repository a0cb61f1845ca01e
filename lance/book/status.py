"""The book's "Status and reproducibility" page: the notebooks as papermill executed them, the
paper-scale runs of :mod:`lance.experiments.plan` with and without a result file, and the
software, hardware and commit of the build (``python -m lance status-page``)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from lance.errors import LanceError
from lance.experiments.plan import group_summary, plan_status
from lance.experiments.provenance import git_commit, hardware, versions
from lance.experiments.results import write_atomic

__all__ = ["status_page"]


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _notebook_status(path: Path) -> dict[str, Any]:
    failed = {"name": path.stem, "parameters": {}, "start_time": None, "duration_s": None, "ok": False}
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not a notebook papermill wrote: listed as failed
        return failed
    if not isinstance(nb, dict) or not isinstance(nb.get("metadata", {}), dict) \
            or not isinstance(nb.get("cells", []), list):  # JSON, but not a notebook's
        return failed
    pm = nb.get("metadata", {}).get("papermill", {})
    errors = any(
        out.get("output_type") == "error"
        for cell in nb.get("cells", [])
        for out in cell.get("outputs", [])
    )
    duration = pm.get("duration")
    return {
        "name": path.stem,
        "parameters": pm.get("parameters") or {},
        "start_time": pm.get("start_time"),
        "duration_s": None if duration is None else round(float(duration), 1),
        "ok": bool(pm) and not pm.get("exception") and not errors,
    }


def _plan_section() -> list[str]:
    """The paper-scale runs (``lance.experiments.plan``): per group how many have a result file, then
    every missing one with the command that writes it."""
    plan = plan_status()
    groups = group_summary(plan)
    missing = plan[~plan.done]
    return [
        "## Paper-scale runs",
        "",
        "The result files under `data/results/` that the chapters render, against the runs the book "
        "plans (`lance.experiments.plan`); the tables say how many epochs and seeds each file has. Hours are the "
        "wall-clock time the runs took on the machines that ran them (from their result files); the estimate "
        "for the missing runs assumes the pace of the done ones of the same group.",
        "",
        _table(["Group", "With a result file", "Planned", "Hours spent", "Hours left (estimate)"],
               [[r["group"], r["done"], r["planned"], f"{r['hours spent']:.1f}", _hours_left(r)]
                for r in groups.to_dict("records")]),
        "",
        *(["Not run yet, with the command that runs each:", "",
           _table(["Group", "Setting", "Command"], [[r.group, r.setting, f"`{r.command}`"]
                                                    for r in missing.itertuples()]), ""] if len(missing) else []),
    ]


def _hours_left(row: dict) -> str:
    left = row["hours left (estimate)"]
    if row["done"] == row["planned"] or left is None or left != left:  # all done, or no pace yet (None/NaN)
        return "—"
    return f"{left:.1f}"


def _executed(executed_dir: Path) -> list[dict]:
    """Each executed notebook's status; a folder that is missing or holds none is refused."""
    if not executed_dir.is_dir():
        raise LanceError(f"{executed_dir} is not a folder of executed notebooks; `make book` writes them to "
                         "_build/executed/PROFILE/.")
    notebooks = [_notebook_status(p) for p in sorted(executed_dir.glob("*.ipynb"))]
    if not notebooks:
        raise LanceError(f"{executed_dir} holds no notebook (*.ipynb); name the folder papermill wrote "
                         "(`make book` writes _build/executed/PROFILE/).")
    return notebooks


def status_page(executed_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the MyST page "Status and reproducibility" for the notebooks in ``executed_dir``
    (executed by papermill): per notebook its start time, duration and outcome, then the
    versions, the hardware and the git commit of the build. Returns ``out_path``."""
    out_path = Path(out_path)
    notebooks = _executed(Path(executed_dir))

    rows = [
        [
            f"`{nb['name']}`",
            ", ".join(f"{k}={v!r}" for k, v in nb["parameters"].items()),
            (nb["start_time"] or "")[:19].replace("T", " "),
            "—" if nb["duration_s"] is None else f"{nb['duration_s']:.1f}",
            "ok" if nb["ok"] else "failed",
        ]
        for nb in notebooks
    ]
    total = sum(nb["duration_s"] or 0.0 for nb in notebooks)
    hw = hardware()
    parts = [
        "# Status and reproducibility",
        "",
        "This page is generated at build time (`python -m lance status-page`, :mod:`lance.book.status`) from the notebooks "
        "as papermill executed them, and from the environment that built the book.",
        "",
        "## Notebook execution",
        "",
        _table(["Notebook", "Parameters", "Started (UTC)", "Duration (s)", "Status"], rows),
        "",
        f"{len(notebooks)} notebook(s), {sum(nb['ok'] for nb in notebooks)} ok, "
        f"{total:.1f} s of execution in total.",
        "",
        *_plan_section(),
        "## Software",
        "",
        _table(["Package", "Version"], [[k, v] for k, v in versions().items()]),
        "",
        "## Hardware",
        "",
        _table(["Property", "Value"], [
            ["Platform", hw["platform"]],
            ["CPU", hw["cpu"]],
            ["Logical cores", hw["logical_cores"]],
            ["Torch threads", hw["torch_threads"]],
            ["Memory (GiB)", hw["memory_gib"]],
            ["GPU", hw["gpu"] or "none"],
        ]),
        "",
        "## Source",
        "",
        f"Built from git commit `{git_commit()}` on "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    write_atomic(out_path, "\n".join(parts), overwrite=True)
    return out_path
