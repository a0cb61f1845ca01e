"""Test order for ``make test``'s parallel run: the book build (tests/test_book.py, minutes of
notebook execution) goes first, so that its worker starts on it at once while the others share out
the rest; otherwise collection order."""

from __future__ import annotations


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_book.py")  # stable sort
