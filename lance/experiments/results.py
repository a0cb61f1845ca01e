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

__all__ = ["write_result", "write_atomic", "check_writable", "check_same_config", "read_result", "load_results", "RESULTS_DIR"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "data" / "results"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


FILE_MODE = 0o644


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail now, before a run computes anything, if ``path`` cannot be written: a folder on its way
    is a file, the nearest existing folder is not writable, or the file exists and ``overwrite``
    is not set. The folder is tried with a temporary file, removed at once (``os.access`` says yes
    to root even where nothing can be created, as in ``/proc``). Nothing is left behind."""
    path = Path(path)
    _check_name(path)
    if path.exists() and not overwrite:
        raise LanceError(f"{path} exists; pass --force (overwrite=True) to replace it, or change the config.")
    if path.is_dir():
        raise LanceError(f"{path} is a folder; pass the file to write.")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise LanceError(f"cannot write to {path.parent} ({parent} is a file, not a folder); choose another folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".lance-probe.", suffix=".tmp")
    except OSError as err:
        raise LanceError(f"cannot write to {path.parent} (no file can be created in {parent}: "
                         f"{err.strerror or err}); choose another folder.") from None
    os.close(fd)
    os.unlink(probe)
    return path


# What the temporary file's name adds to the final name (see write_atomic): ".NAME." + 8 random + ".tmp".
_TMP_EXTRA = len("..") + 8 + len(".tmp")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up does not exist
        return False


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    while not _exists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _check_name(path: Path) -> None:
    """A name the file system can hold: no NUL byte, and no part longer than the folder allows
    (with room for write_atomic's temporary name beside it)."""
    if "\0" in str(path):
        raise LanceError(f"the path {str(path)!r} contains a NUL byte; choose another name.")
    try:
        name_max = os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in path.parts:
        size, limit = len(os.fsencode(part)), name_max - (_TMP_EXTRA if part == path.name else 0)
        if size > limit:
            raise LanceError(f"the name {part[:40]!r}... is {size} bytes long, more than this folder allows "
                             f"({limit}); choose a shorter name.")


def write_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, mode 0644. Without
    ``overwrite`` the file is claimed exclusively (a hard link, which fails if the name exists):
    of two writers of the same file, the second gets a :class:`LanceError` and the first file
    stays whole. With ``overwrite`` it is replaced atomically."""
    if not isinstance(path, (str, os.PathLike)):
        raise LanceError(f"the path to write must be a str or a Path, got {type(path).__name__}.")
    if not isinstance(text, str):
        raise LanceError(f"write_atomic writes text (a str), got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise LanceError(f"the text to write to {path} is not valid UTF-8 ({err.reason} at {err.start}).") from None
    path = Path(path)
    check_writable(path, overwrite=True)  # a file on the way, a folder at the name: one line, nothing written
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise LanceError(f"cannot write {path} ({err.strerror or err}); choose another folder.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, FILE_MODE)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise LanceError(f"{path} exists (another process may have just written it); not replacing it: "
                         "pass --force (overwrite=True) to replace it.") from None
    except OSError as err:  # a full disk, a quota: any earlier file at the name is untouched
        raise LanceError(f"cannot write {path} ({err.strerror or err}); free some space or choose another "
                         "folder.") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_result(path: str | os.PathLike, record: dict, *, overwrite: bool = False) -> Path:
    """Write ``record`` as JSON to ``path`` with :func:`write_atomic`: never over another file
    unless ``overwrite``; a failure leaves any earlier file untouched."""
    if not isinstance(record, dict):
        raise LanceError(f"a result record is a dict with config, metrics and provenance, got {type(record).__name__}.")
    for key in ("config", "metrics", "provenance"):
        if key not in record:
            raise LanceError(f"a result record needs a {key!r} section.")
    try:
        text = json.dumps(_clean(record), indent=1, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise LanceError(f"the record cannot be written as JSON ({err}); convert tensors and arrays to numbers "
                         "or lists first.") from None
    return write_atomic(path, text, overwrite=overwrite)


def check_same_config(path: str | os.PathLike, config: dict, ignore: tuple = ()) -> None:
    """A result file at ``path`` counts as "done already" only when it holds ``config``: one of
    another configuration under the same name is reported instead of being taken for this one."""
    try:
        stored = read_result(path).get("config", {})
    except (OSError, ValueError) as err:
        raise LanceError(f"{path} exists but cannot be read ({type(err).__name__}); pass --force to replace it.") from None
    plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    diffs = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in config.items()
             if k not in ignore and k in stored and plain(stored[k]) != plain(v)]
    if diffs:
        raise LanceError(f"{path} holds a run of another configuration ({'; '.join(diffs[:3])}); pass --force to "
                         "replace it, or --out another folder.")


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
