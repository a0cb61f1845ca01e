"""Result files are written atomically and never silently overwritten."""

from __future__ import annotations

import json

import pytest

import lance
from lance.results import load_results, write_result


def _record(acc):
    return {"config": {"method": "lance", "layers": 2}, "metrics": {"accuracy": acc, "nan": float("nan")},
            "provenance": {"commit": "abc"}}


def test_write_refuses_to_overwrite_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_result(path, _record(1.0))
    with pytest.raises(lance.LanceError, match="not overwriting"):
        write_result(path, _record(2.0))
    assert json.loads(path.read_text())["metrics"]["accuracy"] == 1.0
    write_result(path, _record(3.0), overwrite=True)
    assert json.loads(path.read_text())["metrics"] == {"accuracy": 3.0, "nan": None}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _record(1.0))
    bad = _record(2.0)
    bad["metrics"]["obj"] = object()  # not JSON-serialisable
    with pytest.raises(TypeError):
        write_result(path, bad, overwrite=True)
    assert json.loads(path.read_text())["metrics"]["accuracy"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_load_results_flattens(tmp_path):
    write_result(tmp_path / "a.json", _record(1.0))
    write_result(tmp_path / "b" / "c.json", _record(2.0))
    table = load_results(tmp_path)
    assert list(table["metrics.accuracy"]) == [1.0, 2.0]
    assert list(table["file"]) == ["a.json", "b/c.json"]
    assert "config.method" in table and "provenance.commit" in table
    with pytest.raises(lance.LanceError, match="needs a 'metrics'"):
        write_result(tmp_path / "x.json", {"config": {}, "provenance": {}})
