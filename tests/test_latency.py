"""The latency benchmark (paper Sec. 3.4): record layout, bookkeeping of the measurements, config
checks. Nothing here asserts a speed: speed is what ``python -m lance latency`` measures."""

from __future__ import annotations

import dataclasses
import json
import statistics

import pytest

import lance
import lance.models
from lance.experiments.latency import (LatencyConfig, format_latency, goal_lines, ratio_ranges, ratios, read_latency,
                           result_record, run_latency, summary)
from lance.experiments.results import write_result

TINY = dict(model="mobilenet_v2", pretrained=False, resolution=64, batch_size=8, calibration_batches=2,
            data="samples", threads=1)


@pytest.fixture(scope="module")
def record():
    cfg = LatencyConfig(**TINY, layer_counts=(1, 2), methods=("bp", "lance"), iterations=2, trials=3)
    return run_latency(cfg, log=lambda *_: None)


def test_one_entry_per_setting_with_every_measurement(record):
    assert [(r["layers"], r["method"]) for r in record["results"]] == [(1, "bp"), (1, "lance"), (2, "bp"),
                                                                       (2, "lance")]
    for r in record["results"]:
        for key in ("forward_s", "backward_s", "total_s"):
            assert len(r[key]) == 3 * 2 and all(t > 0 for t in r[key])
        assert r["trial"] == [0, 0, 1, 1, 2, 2]
        assert r["total_s"] == [f + b for f, b in zip(r["forward_s"], r["backward_s"])]
        if r["method"] == "lance":  # calibrated ranks of every trainable layer (batch, channel, h, w)
            assert len(r["ranks"]) == r["layers"] and all(len(v) == 4 for v in r["ranks"].values())
        else:
            assert r["ranks"] == {}


def test_record_says_what_was_run(record):
    assert record["config"] == dataclasses.asdict(LatencyConfig(**TINY, layer_counts=(1, 2), methods=("bp", "lance"),
                                                                iterations=2, trials=3))
    setup = record["setup"]
    assert setup["resolution"] == 64 and setup["threads"] == 1 and "sample photographs" in setup["data"]
    assert setup["cuts"] == {"1": "features.18", "2": "features.17"}  # MobileNetV2's last conv, then the block before
    assert setup["trainable_parameters"]["2"] > setup["trainable_parameters"]["1"] > 0
    assert record["provenance"]["commit"] and record["provenance"]["wall_time_s"] > 0


def test_statistics_are_those_of_the_measurements(record):
    s = summary(record)
    assert len(s) == 4 * 3 and (s.n == 6).all()
    r = {(x["layers"], x["method"]): x for x in record["results"]}
    row = s[(s.layers == 2) & (s.method == "bp") & (s.phase == "backward")].iloc[0]
    assert row.median_ms == pytest.approx(statistics.median(r[(2, "bp")]["backward_s"]) * 1e3)
    assert row.min_ms <= row.q25_ms <= row.median_ms <= row.q75_ms <= row.max_ms
    rel = ratios(record)
    assert list(rel.columns) == ["bp"] and list(rel.index) == [1, 2]
    assert rel.loc[1, "bp"] == pytest.approx(statistics.median(r[(1, "bp")]["total_s"])
                                             / statistics.median(r[(1, "lance")]["total_s"]))
    rr = ratio_ranges(record)
    assert rr.loc["bp", "min"] == rel.bp.min() and rr.loc["bp", "max"] == rel.bp.max()
    text = format_latency(record)
    assert "relative to LANCE" in text and "BP " in text and len(text.splitlines()) >= 4 + 4
    met = int((rel.bp >= 1).sum())
    assert f"goal, LANCE's step at most as slow as BP's: met at {met} of 2 layer counts" in text
    assert "HOSVD" not in text.split("goal")[-1]  # no HOSVD in this record, no HOSVD goal line


def test_result_file_round_trip(record, tmp_path):
    path = tmp_path / "latency.json"
    write_result(path, result_record(record))
    on_disk = json.loads(path.read_text())
    assert set(on_disk) == {"config", "metrics", "provenance"} and len(on_disk["metrics"]["results"]) == 4
    back = read_latency(path)
    assert back["results"] == record["results"] and back["config"]["layer_counts"] == [1, 2]
    assert ratios(back).equals(ratios(record))


def test_baselines_time_and_record_their_ranks():
    rec = run_latency(LatencyConfig(**TINY, layer_counts=(1,), methods=("hosvd", "asi"), iterations=1, trials=1),
                      log=lambda *_: None)
    hosvd, asi = rec["results"]
    assert hosvd["method"] == "hosvd" and len(hosvd["total_s"]) == 1 and hosvd["total_s"][0] > 0
    assert all(r is not None and r >= 1 for v in hosvd["ranks"].values() for r in v)  # ranks of the last step
    assert asi["ranks"] and asi["total_s"][0] > 0
    rec = run_latency(LatencyConfig(**TINY, layer_counts=(1,), methods=("hosvd",), iterations=1, trials=1,
                                    hosvd_solver="svd"), log=lambda *_: None)
    assert rec["config"]["hosvd_solver"] == "svd" and rec["results"][0]["ranks"] == hosvd["ranks"]
    rec = {**rec, "results": rec["results"] + [{**rec["results"][0], "method": "lance",
                                                "total_s": [t / 20 for t in rec["results"][0]["total_s"]]}]}
    rec["config"] = {**rec["config"], "methods": ["hosvd", "lance"]}
    assert goal_lines(rec) == ["goal, per-step HOSVD (bases by svd) at least 10x slower than LANCE: met at 1 of 1 "
                               "layer counts"]


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size"),
    ("batch_size", True, "batch_size"),
    ("iterations", 0, "iterations"),
    ("trials", -1, "trials"),
    ("calibration_batches", 0, "calibration_batches"),
    ("threads", -1, "threads"),
    ("layer_counts", (), "layer_counts is empty"),
    ("layer_counts", (0, 1), "layer_counts"),
    ("layer_counts", (2, 2), "repeated"),
    ("methods", ("bp", "sgd"), "unknown method 'sgd'; choose one of bp, hosvd"),
    ("methods", (), "methods is empty"),
    ("energy", 0.0, "energy"),
    ("hosvd_energy", 1.5, "hosvd_energy"),
    ("hosvd_solver", "qr", "unknown hosvd_solver 'qr'; choose one of"),
    ("data", "imagenet", "unknown data 'imagenet'; choose one of auto, cifar100, samples"),
    ("model", "vgg16", "unknown model"),
    ("lr", -0.1, "lr"),
])
def test_bad_config_values_are_refused_clearly(field, value, message):
    with pytest.raises(lance.LanceError, match=message):
        LatencyConfig(**{field: value})


def test_more_layers_than_the_model_has_fails_before_any_timing():
    cfg = LatencyConfig(**{**TINY, "layer_counts": (1, 1000)})
    with pytest.raises(lance.LanceError, match="fewer than the 1000 requested"):
        run_latency(cfg, log=lambda *_: None)


@pytest.mark.skipif(lance.models.weights_file("mobilenet_v2") is None, reason="needs the MobileNetV2 weights package")
def test_cli_writes_a_result_file_and_never_silently_overwrites(tmp_path, capsys):
    from lance.cli import main

    out = tmp_path / "lat.json"
    argv = ["latency", "--model", "mobilenet_v2", "--resolution", "64", "--batch-size", "8", "--layers", "1",
            "--methods", "bp", "lance", "--trials", "1", "--iterations", "1", "--calibration-batches", "1",
            "--data", "samples", "--out", str(out)]
    assert main(argv) == 0
    on_disk = json.loads(out.read_text())
    assert on_disk["config"]["trials"] == 1 and on_disk["config"]["methods"] == ["bp", "lance"]
    assert len(on_disk["metrics"]["results"]) == 2 and on_disk["provenance"]["commit"]
    capsys.readouterr()
    assert main(argv) == 2  # refused before anything is measured
    err = capsys.readouterr().err
    assert err.startswith("error:") and "exists; pass --force" in err
    assert main(argv + ["--force"]) == 0
