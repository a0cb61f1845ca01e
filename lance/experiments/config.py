"""What every experiment's configuration shares: fields that carry their own help text and
check, one validation that runs them all before any data is loaded, and the checks themselves.

A configuration is a dataclass whose fields are declared with :func:`option`::

    epochs: int = option(50, "training epochs", positive)

:func:`validate` runs every field's check and raises a one-line :class:`LanceError` naming the
field, the value and what it may be. The command line reads the same help texts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Optional

from lance.errors import LanceError

__all__ = ["option", "validate", "add_options", "given_options", "model_names", "dataset_names", "positive", "non_negative", "positive_float", "finite_float", "fraction",
           "one_of", "flag", "seed_value", "text", "span", "distinct", "resolution_px", "at_most"]

Check = Callable[[str, Any], None]


def option(default: Any, help: str, check: Optional[Check] = None) -> Any:
    """A dataclass field with its help text and its check (see :func:`validate`)."""
    meta = {"help": help, "check": check}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def model_names() -> tuple[str, ...]:
    """The networks the zoo builds (for a ``one_of`` check; read when a config is checked)."""
    from lance.models.zoo import MODEL_NAMES
    return MODEL_NAMES


def dataset_names() -> tuple[str, ...]:
    """The datasets the catalogue knows."""
    from lance.data.catalog import DATASETS
    return tuple(DATASETS)


def validate(cfg: Any) -> Any:
    """Run every field's check; returns ``cfg``."""
    for f in dataclasses.fields(cfg):
        check = f.metadata.get("check")
        if check is not None:
            check(f.name, getattr(cfg, f.name))
    return cfg


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise LanceError(f"{name} must be a positive whole number (1 or more), got {value!r}.")


def non_negative(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise LanceError(f"{name} must be a whole number >= 0 (0: the default), got {value!r}.")


def seed_value(name: str, value: Any) -> None:
    if not _is_int(value) or not 0 <= value < 2**32:
        raise LanceError(f"{name} must be a whole number in [0, 2**32), got {value!r}.")


def positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LanceError(f"{name} must be a finite number > 0, got {value!r}.")


def finite_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LanceError(f"{name} must be a finite number >= 0, got {value!r}.")


def fraction(name: str, value: Any) -> None:
    """An energy threshold or a share: in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise LanceError(f"{name} must be in (0, 1], got {value!r}.")


def one_of(choices: Iterable[str] | Callable[[], Iterable[str]]) -> Check:
    def check(name: str, value: Any) -> None:
        allowed = tuple(choices() if callable(choices) else choices)
        if value not in allowed:
            raise LanceError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, allowed))}.")
    check.choices = choices
    return check


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise LanceError(f"{name} must be True or False, got {value!r}.")


def text(name: str, value: Any) -> None:
    """A name that becomes part of file names: no path separators, no leading dot."""
    if not isinstance(value, str) or "/" in value or "\\" in value or value.startswith("."):
        raise LanceError(f"{name} must be a plain name (no '/', '\\\\' or leading '.'), got {value!r}.")


def span(name: str, value: Any) -> None:
    """Classes ``(first, end)`` with ``0 <= first < end``, or None."""
    if value is None:
        return
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_int(v) for v in value)
            or not 0 <= value[0] < value[1] - 1):
        raise LanceError(f"{name} must be two whole numbers FIRST END with 0 <= FIRST and END >= FIRST + 2 (a "
                         f"classifier needs two classes at least), got {value!r}.")


def distinct(name: str, value: Any) -> None:
    """A list without repeated entries."""
    if isinstance(value, (tuple, list)) and len(set(value)) != len(value):
        raise LanceError(f"{name} has repeated entries: {list(value)}; give each once.")


def resolution_px(name: str, value: Any) -> None:
    """An input size: 0 (the model's native one) or at least 32 px (the networks downsample by 32)."""
    if not _is_int(value) or (value != 0 and not 32 <= value <= 4096):
        raise LanceError(f"{name} must be 0 (the model's native size) or a size in px from 32 to 4096 (the networks "
                         f"downsample by 32), got {value!r}.")


def at_most(limit: float, check: Check) -> Check:
    """``check``, and the value no larger than ``limit`` (a bound that keeps a run meaningful)."""
    def bounded(name: str, value: Any) -> None:
        check(name, value)
        if value > limit:
            raise LanceError(f"{name} must be at most {limit:g}, got {value!r}.")
    return bounded


def _argument_type(hint: Any) -> tuple[Any, Optional[int]]:
    """(argparse type, nargs) of a field's type hint."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return _argument_type(args[0])
    if typing.get_origin(hint) is tuple:
        return args[0], ("+" if Ellipsis in args else len(args))
    return hint, None


def add_options(parser, cls, *, exclude: Iterable[str] = (), metavars: Optional[dict] = None,
                names: Optional[dict] = None) -> None:
    """One command-line option per field of the configuration class ``cls``, named after the
    field (``batch_size`` -> ``--batch-size``; ``names`` gives another flag for a field), with
    the field's help text and default: a default lives in the dataclass only. A bool field that
    is on by default becomes ``--no-NAME``, one that is off ``--NAME``. Every option defaults to
    None (given_options leaves it out), so that a profile or the dataclass fills in what the user
    did not give."""
    import typing

    hints = typing.get_type_hints(cls)
    metavars, names = metavars or {}, names or {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or "help" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = getattr(f.metadata.get("check"), "choices", None)
        allowed = f"; one of {', '.join(map(str, choices() if callable(choices) else choices))}" if choices else ""
        help_text = f"{f.metadata['help']}{allowed} (default: {default!r})"
        kind, nargs = _argument_type(hints[f.name])
        if kind is bool:
            flag_name = f"--no-{f.name}" if default else f"--{f.name}"
            parser.add_argument(flag_name.replace("_", "-"), dest=f.name, action="store_const", const=not default,
                                default=None, help=("turn off: " if default else "") + f.metadata["help"])
            continue
        parser.add_argument(names.get(f.name, _flag_name(f.name)), dest=f.name, type=kind, nargs=nargs, default=None,
                            help=help_text, metavar=metavars.get(f.name))


def given_options(args, cls) -> dict:
    """The fields of ``cls`` that the command line set (those :func:`add_options` made options for)."""
    return {f.name: (tuple(v) if isinstance(v, list) else v) for f in dataclasses.fields(cls)
            if "help" in f.metadata and (v := getattr(args, f.name, None)) is not None}
