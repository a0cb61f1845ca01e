"""Provenance: which code, which packages and which machine produced a result.

Every result file and the book's status page carry the same record::

    record = lance.provenance.provenance(config=cfg, seed=42, wall_time_s=t)

with the git commit (``-dirty`` when tracked files have uncommitted changes), the versions of
the packages that matter, the hardware and a UTC timestamp. :func:`status_page` turns the
notebooks that papermill executed into the book's "Status and reproducibility" page.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "versions", "hardware", "provenance", "status_page", "write_text_atomic"]

#: Distributions reported by :func:`versions`, as ``key: distribution name``.
PACKAGES: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "jupyter-book": "jupyter-book",
    "papermill": "papermill",
    "nbval": "nbval",
    "lance": "lance-book",
}


def _git(root: Path, *args: str) -> str:
    # --no-optional-locks: never take index.lock, so that a concurrent `git commit` is not disturbed
    result = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(root), *args],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return result.stdout.strip()


def git_commit(root: str | os.PathLike | None = None) -> str:
    """Short hash of ``HEAD`` of the repository holding ``root``, plus ``-dirty`` when tracked
    files differ from it (as ``git describe --dirty``: untracked files do not count).

    ``root`` defaults to the directory of this package, i.e. the code that is running.
    Returns ``"unknown"`` outside a git work tree or without git.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages in :data:`PACKAGES` (``None`` if not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, total memory (GiB) and GPU (``None`` if none)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
    }


def _jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def provenance(config: Any = None, seed: int | None = None, wall_time_s: float | None = None) -> dict[str, Any]:
    """One record for a result file: timestamp (UTC), git commit, versions, hardware, and the
    run's ``config`` (a dataclass is converted with :func:`dataclasses.asdict`), ``seed`` and
    ``wall_time_s``."""
    commit = git_commit()
    return {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "git_commit": commit,
        "versions": versions(),
        "hardware": hardware(),
        "config": _jsonable(config),
        "seed": seed,
        "wall_time_s": wall_time_s,
    }


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    :func:`os.replace`, so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the status page -----------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _notebook_status(path: Path) -> dict[str, Any]:
    nb = json.loads(path.read_text(encoding="utf-8"))
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
    """The paper-scale runs (``lance.plan``): per group how many have a result file, then
    every missing one with the command that writes it."""
    from .plan import group_summary, plan_status

    plan = plan_status()
    groups = group_summary(plan)
    missing = plan[~plan.done]
    return [
        "## Paper-scale runs",
        "",
        "The result files under `data/results/` that the chapters render, against the runs the book "
        "plans (`lance.plan`); the tables say how many epochs and seeds each file has. Hours are the "
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


def status_page(executed_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the MyST page "Status and reproducibility" for the notebooks in ``executed_dir``
    (executed by papermill): per notebook its start time, duration and outcome, then the
    versions, the hardware and the git commit of the build. Returns ``out_path``."""
    executed_dir, out_path = Path(executed_dir), Path(out_path)
    notebooks = [_notebook_status(p) for p in sorted(executed_dir.glob("*.ipynb"))]

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
        "This page is generated at build time (`python -m lance status-page`) from the notebooks "
        "as papermill executed them, and from the environment that built the book.",
        "",
        "## Notebook execution",
        "",
        _table(["Notebook", "Parameters", "Started (UTC)", "Duration (s)", "Status"], rows)
        if rows else "No executed notebooks were found.",
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
    write_text_atomic(out_path, "\n".join(parts))
    return out_path
