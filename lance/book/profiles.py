"""A chapter's sizes: its ``profile`` (smoke, book, paper) fills in what the reader did not set.

Every literal of a chapter's ``parameters`` cell takes effect in every profile: a size that a
profile decides has ``None`` as its default, and :func:`sizes` replaces only those ``None`` by
the profile's value. ``papermill ... -p profile smoke -p calibration_batches 10`` then runs the
smoke profile with 10 calibration batches.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

from lance.errors import LanceError

__all__ = ["sizes", "PROFILE_NAMES"]

PROFILE_NAMES = ("smoke", "book", "paper")


def sizes(profile: str, table: Mapping[str, Mapping[str, object]], **given) -> SimpleNamespace:
    """The values of ``table[profile]``, with every one the reader gave (not ``None``) in
    ``given`` put in its place. ``table`` maps each profile to the same names."""
    if profile not in table:
        raise LanceError(f"unknown profile {profile!r}; choose one of {', '.join(table)}.")
    values = dict(table[profile])
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise LanceError(f"no profile sets {', '.join(unknown)}; the profiles set {', '.join(sorted(values))}.")
    values.update({k: v for k, v in given.items() if v is not None})
    return SimpleNamespace(**values)
