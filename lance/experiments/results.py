"""Result files: one JSON record per run under ``data/results/``, written atomically.

Every record has ``config``, ``metrics`` and ``provenance``; :func:`load_results` flattens a
directory of them into a pandas table with dotted column names (``config.method``,
``metrics.accuracy``, ...), which is how the book's chapters read them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lance.errors import LanceError

__all__ = ["write_result", "read_result", "load_results", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "data" / "results"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_result(path: str | os.PathLike, record: dict, *, overwrite: bool = False) -> Path:
    """Write ``record`` as JSON to ``path`` atomically. An existing file is never replaced
    unless ``overwrite``; a failure leaves any earlier file untouched."""
    path = Path(path)
    for key in ("config", "metrics", "provenance"):
        if key not in record:
            raise LanceError(f"a result record needs a {key!r} section.")
    if path.exists() and not overwrite:
        raise LanceError(f"{path} exists; not overwriting it (pass overwrite=True / --force to replace it).")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(record), f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_result(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k in ("config", "metrics", "provenance") and not prefix:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_results(directory: str | os.PathLike = RESULTS_DIR, pattern: str = "*.json"):
    """All result records under ``directory`` (recursively) as one flat table; ``file`` is
    the path relative to the directory."""
    import pandas as pd

    directory = Path(directory)
    rows = []
    for path in sorted(directory.rglob(pattern)):
        row = _flatten(read_result(path))
        row["file"] = str(path.relative_to(directory))
        rows.append(row)
    return pd.DataFrame(rows)
