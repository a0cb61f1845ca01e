"""The fine-tuning trainer end to end on a slice of the real CIFAR-100 (skipped without it)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

import lance
import lance.experiments.finetune as ft
import lance.models
import lance.core.selection
from lance.experiments.finetune import FinetuneConfig, finetune, result_name

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATA = os.environ.get("LANCE_DATA_DIR") or (str(SHARED) if SHARED.is_dir() else None)
pytestmark = pytest.mark.skipif(
    DATA is None or not (Path(DATA) / "cifar-100-python").is_dir() or lance.models.weights_file("mobilenet_v2") is None,
    reason="needs CIFAR-100 (LANCE_DATA_DIR or ../shared/datasets) and the MobileNetV2 weights package")


def _cfg(method, **kw):
    values = dict(model="mobilenet_v2", dataset="cifar100", method=method, layers=2, epochs=2, batch_size=32,
                  resolution=64, train_limit=96, test_limit=64, calibration_batches=2, classes=(50, 60))
    return FinetuneConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("method", ["bp", "lance", "hosvd", "asi"])
def test_result_record_has_the_agreed_keys_and_measured_memory(method, tmp_path, cache_dir):
    rec = finetune(_cfg(method), data_dir=DATA, cache_dir=cache_dir, out_dir=tmp_path, progress=False, log=lambda *_: 0)
    path = tmp_path / result_name(_cfg(method))
    on_disk = json.loads(path.read_text())
    for key in ("model", "dataset", "method", "layers", "energy", "epochs", "batch_size", "seed"):
        assert key in on_disk["config"]
    for key in ("accuracy", "activation_mb", "activation_mb_measured", "train_tflops"):
        assert isinstance(on_disk["metrics"][key], float)
    prov = on_disk["provenance"]
    assert prov["commit"] and prov["command"] and prov["device"] == "cpu"
    assert on_disk["metrics"]["cuda_max_memory_allocated_mb"] is None  # measured on a GPU only
    # the inputs: the weights by sha256, the data files by md5 (the published ones for CIFAR-100)
    from lance.experiments.provenance import file_sha256
    assert prov["weights_sha256"] == file_sha256(lance.models.weights_file("mobilenet_v2"))
    assert prov["data"]["train"]["md5"]["train"] == "16019d7e3df5f24257cddd939b257f8d"
    assert os.stat(path).st_mode & 0o777 == 0o644
    m = rec["metrics"]
    assert 0 <= m["accuracy"] <= 100 and m["num_classes"] == 10 and m["train_images"] == 96
    if method in ("bp", "lance", "asi"):  # fixed shapes: analytic and measured agree to the byte
        assert m["activation_mb"] == pytest.approx(m["activation_mb_measured"], rel=1e-12)
    if method == "bp":
        assert m["activation_mb"] == m["bp_activation_mb"] and m["angle_deg"] == [{}, {}]
    else:
        assert m["activation_mb"] < m["bp_activation_mb"]
        assert all(0 <= a < 180 for epoch in m["angle_deg"] for a in epoch.values())
    # Phase I's wall time: none for BP, a part of the run's for the others
    assert m["calibration_s"] == 0.0 if method == "bp" else 0 < m["calibration_s"] < prov["wall_time_s"]
    if method != "hosvd":  # the paper's count: forward plus weight-gradient MACs, below ours (which adds dx)
        assert 0 < m["train_tmacs_paper_convention"] < m["train_tflops"]
    if method == "hosvd":
        assert m["decomposition_tflops"] > 0
        # its memory changes from step to step: the mean, the largest and the first batch's, each recorded
        assert m["activation_mb_first"] <= m["activation_mb_max"] and m["activation_mb"] <= m["activation_mb_max"]
        assert m["activation_mb_first"] == pytest.approx(m["activation_mb_measured"], rel=1e-6)
    else:
        assert "activation_mb_max" not in m
    with pytest.raises(lance.LanceError, match="exists"):
        finetune(_cfg(method), data_dir=DATA, cache_dir=cache_dir, out_dir=tmp_path, progress=False)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, cache_dir, monkeypatch):
    cfg = _cfg("lance")
    whole = finetune(cfg, data_dir=DATA, cache_dir=cache_dir, progress=False)
    real_evaluate = ft._evaluate
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # during epoch 2, after epoch 1's checkpoint
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(ft, "_evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(ft, "_evaluate", real_evaluate)
    messages = []
    resumed = finetune(cfg, data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False,
                       log=messages.append)
    assert any("resumed" in str(msg) for msg in messages)
    # the wall time counts both processes, and both commits are named
    prov = resumed["provenance"]
    assert prov["wall_time_s"] > prov["wall_time_this_process_s"] + resumed["metrics"]["history"][0]["seconds"] * 0.99
    assert len(prov["commits"]) == 2
    # so does the CPU time, epoch by epoch
    assert prov["cpu_time_s"] >= sum(h["cpu_seconds"] for h in resumed["metrics"]["history"]) * 0.99
    assert all(h["cpu_seconds"] > 0 for h in resumed["metrics"]["history"])
    for a, b in zip(whole["metrics"]["history"], resumed["metrics"]["history"]):  # bit for bit
        assert a["train_loss"] == b["train_loss"] and a["train_acc"] == b["train_acc"]
        assert a["test_acc"] == b["test_acc"]
        assert a["weight_norm"] == b["weight_norm"] and a["angle_deg"] == b["angle_deg"]
    # the pretrained norms come from the checkpoint, not from the weights the resumed process started with
    assert resumed["metrics"]["weight_norm_initial"] == pytest.approx(whole["metrics"]["weight_norm_initial"], rel=1e-12)


def test_the_weight_norms_of_the_trained_layers_are_recorded_per_epoch(cache_dir):
    layers = lance.core.selection.trainable_layers(lance.models.build("mobilenet_v2", num_classes=10, pretrained=False), 2)
    moved = finetune(_cfg("lance"), data_dir=DATA, cache_dir=cache_dir, progress=False)["metrics"]
    still = finetune(_cfg("lance", lr=0.0), data_dir=DATA, cache_dir=cache_dir, progress=False)["metrics"]
    start = still["weight_norm_initial"]
    assert set(start) == set(layers) and all(v > 0 for v in start.values())
    assert start == pytest.approx(moved["weight_norm_initial"], rel=1e-12)  # the same pretrained weights
    for epoch in still["history"]:  # a learning rate of 0 (weight decay included) moves nothing
        assert epoch["weight_norm"] == pytest.approx(start, rel=1e-7)
    last = moved["history"][-1]["weight_norm"]
    assert any(abs(last[n] - start[n]) > 1e-6 * start[n] for n in layers)


def test_the_authors_selection_trains_no_depthwise_convolution(cache_dir):
    cfg = dataclasses.replace(_cfg("lance"), layers=4, epochs=1, skip_depthwise=True)
    assert "_nodw" in result_name(cfg)
    assert result_name(cfg) != result_name(dataclasses.replace(cfg, skip_depthwise=False))
    rec = finetune(cfg, data_dir=DATA, cache_dir=cache_dir, progress=False)
    trained = set(rec["metrics"]["ranks"])
    model = lance.models.build("mobilenet_v2", num_classes=10, pretrained=False)
    assert trained == set(lance.trainable_layers(model, 4, skip_depthwise=True))
    assert all(model.get_submodule(n).groups == 1 for n in trained)
    assert set(rec["metrics"]["weight_norm_initial"]) == trained  # only these layers (and the head) train


def test_without_flips_the_epochs_see_the_same_order_and_no_flipped_image():
    from lance.experiments.finetune import _epoch_plan

    flipped, plain = _epoch_plan(300, 32, 42, 3), _epoch_plan(300, 32, 42, 3, flip=False)
    assert [o.tolist() for o, _ in flipped] == [o.tolist() for o, _ in plain]
    assert sum(int(f.sum()) for _, f in flipped) > 0 and all(int(f.sum()) == 0 for _, f in plain)
    assert "_noflip" in result_name(_cfg("bp", flip=False)) and "flip" not in result_name(_cfg("bp"))


def test_a_table_selects_no_probe_of_another_optimiser_size_or_augmentation():
    import pandas as pd

    from lance.book import tables

    runs = pd.DataFrame([{"config.model": "mcunet-in2", "config.dataset": "cifar100", "config.batch_size": 128,
                          "config.train_limit": 0, "config.classes": None, "config.energy": 0.7,
                          "config.calibration_batches": 100, "config.lr": 0.05, **change}
                         for change in ({}, {"config.optimizer": "table4"}, {"config.flip": False},
                                        {"config.resolution": 96}, {"config.optimizer": "script", "config.flip": True,
                                                                    "config.resolution": 0})])
    assert tables.paper_setting(runs).tolist() == [True, False, False, False, True]
    assert tables.paper_setting(runs, resolution=96).tolist() == [False, False, False, True, False]


def test_a_learning_rate_other_than_the_papers_is_part_of_the_result_name():
    assert "lr" not in result_name(_cfg("lance"))
    assert "_lr0.01_" in result_name(_cfg("lance", lr=0.01))
    assert result_name(_cfg("lance", lr=0.01)) != result_name(_cfg("lance", lr=0.005))


def test_bad_config_is_refused():
    with pytest.raises(lance.LanceError, match="method"):
        FinetuneConfig(method="sgd")
    with pytest.raises(lance.LanceError, match="optimizer"):
        FinetuneConfig(optimizer="adam")


def test_the_angle_diagnostic_gives_nan_for_a_zero_gradient_instead_of_ending_the_run():
    from lance.experiments.finetune import _angle_or_nan

    g = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert math.isnan(_angle_or_nan(torch.zeros(2, 2), g)) and math.isnan(_angle_or_nan(g, torch.zeros(2, 2)))
    assert math.isnan(_angle_or_nan(None, g))
    assert _angle_or_nan(g, torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(90.0)


def test_a_checkpoint_of_another_configuration_is_refused_and_force_starts_afresh(tmp_path, cache_dir):
    finetune(_cfg("lance", epochs=1), data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False)
    (ckpt,) = tmp_path.glob("*.pt")
    other = _cfg("lance", epochs=1, test_limit=32)  # the readable name is the same ...
    if result_name(other) != result_name(_cfg("lance", epochs=1)):
        ckpt.rename(tmp_path / (result_name(other)[:-5] + ".pt"))  # ... or make it so: a file planted under its name
    with pytest.raises(lance.LanceError, match="another configuration .*test_limit: 64 there, 32 now"):
        finetune(other, data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False)
    messages = []
    finetune(other, data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False, overwrite=True,
             log=messages.append)
    assert not any("resumed" in str(m) for m in messages)


class _Planted:
    """A pickle that, when loaded by an unsafe torch.load, writes a file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path(self.target).write_text, ("the planted pickle ran",))


def test_a_planted_pickle_in_place_of_a_checkpoint_never_runs(tmp_path, cache_dir):
    cfg = _cfg("lance", epochs=1)
    sentinel = tmp_path / "ran.txt"
    torch.save({"config": dataclasses.asdict(cfg), "model": _Planted(sentinel)},
               tmp_path / (result_name(cfg)[:-5] + ".pt"))
    with pytest.raises(lance.LanceError, match="not a plain tensor file"):
        finetune(cfg, data_dir=DATA, cache_dir=cache_dir, checkpoint_dir=tmp_path, progress=False)
    assert not sentinel.exists()


def test_a_diverging_run_stops_with_a_one_line_error_and_writes_no_result(tmp_path, cache_dir):
    cfg = _cfg("bp", epochs=1, lr=1e30, optimizer="table4")
    with pytest.raises(lance.DivergedError, match=r"became (nan|inf) at epoch 1, step \d+ \(lr 1e\+30\)"):
        finetune(cfg, data_dir=DATA, cache_dir=cache_dir, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.json"))
