"""Bad input gets a clear error that says what was wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lance
from lance.errors import LanceError

from helpers import random_batches, single_layer_model


def _conv_model():
    return single_layer_model(nn.Conv2d(3, 4, 3, padding=1))


@pytest.mark.parametrize("energy", [0, 0.0, -0.1, 1.0001, 2, float("nan"), "high", None])
def test_energy_outside_unit_interval(energy):
    with pytest.raises(lance.LanceError, match=r"\(0, 1\]"):
        lance.calibrate(_conv_model(), random_batches((2, 3, 5, 5)), ["0"], energy=energy)


def test_unknown_layer_name_suggests_close_ones():
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)))
    with pytest.raises(lance.UnknownLayerError, match=r"no module named 'features\.3'.*Did you mean"):
        lance.calibrate(model, random_batches((2, 3, 8, 8), dtype=torch.float32), ["features.3"])


@pytest.mark.parametrize("module", [nn.BatchNorm2d(3), nn.Conv1d(3, 3, 1), nn.ReLU(), nn.Conv3d(3, 3, 1)])
def test_unsupported_module_types(module):
    model = nn.Sequential(module)
    with pytest.raises(lance.UnsupportedLayerError, match="nn.Conv2d and nn.Linear"):
        lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])


def test_linear_on_4d_input_refused():
    model = single_layer_model(nn.Linear(5, 2))
    with pytest.raises(lance.UnsupportedLayerError, match="2-D .* and 3-D"):
        lance.calibrate(model, random_batches((2, 3, 4, 5)), ["0"])


def test_no_batches():
    with pytest.raises(lance.LanceError, match="at least one batch"):
        lance.calibrate(_conv_model(), [], ["0"])


def test_no_layers_and_bad_n():
    with pytest.raises(lance.LanceError, match="no layers"):
        lance.calibrate(_conv_model(), random_batches((2, 3, 5, 5)), [])
    with pytest.raises(lance.LanceError, match="fewer than the 3"):
        lance.trainable_layers(_conv_model(), 3)
    with pytest.raises(lance.LanceError, match="positive integer"):
        lance.trainable_layers(_conv_model(), 0)


def test_training_batch_of_another_size():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((4, 3, 5, 5)), ["0"])
    lance.compress(model, cal)
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(lance.BatchSizeError, match=r"batch size 4 .* got a batch of 3.*drop_last=True"):
        model(x)


def test_calibration_batches_of_different_sizes():
    batches = random_batches((4, 3, 5, 5), n=2) + random_batches((3, 3, 5, 5), n=1)
    with pytest.raises(lance.BatchSizeError, match="drop_last=True"):
        lance.calibrate(_conv_model(), batches, ["0"])
    # with the batch mode kept, mixed sizes are fine
    lance.calibrate(_conv_model(), batches, ["0"], compress_batch=False)


def test_input_of_another_resolution():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((4, 3, 5, 5)), ["0"])
    lance.compress(model, cal)
    with pytest.raises(lance.InputShapeError, match=r"\(B, 3, 5, 5\)"):
        model(torch.randn(4, 3, 6, 6, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations(bad):
    batches = random_batches((2, 3, 5, 5), n=3)
    batches[1][0, 0, 0, 0] = bad
    with pytest.raises(lance.NonFiniteActivationError, match=r"layer '0'.*batch 1"):
        lance.calibrate(_conv_model(), batches, ["0"])


def test_calibration_for_another_model():
    cal = lance.calibrate(_conv_model(), random_batches((2, 3, 5, 5)), ["0"])
    other = single_layer_model(nn.Conv2d(3, 8, 3, padding=1))
    with pytest.raises(lance.CalibrationMismatchError, match="another model"):
        lance.compress(other, cal)
    strided = single_layer_model(nn.Conv2d(3, 4, 3, padding=1, stride=2))
    with pytest.raises(lance.CalibrationMismatchError):
        lance.compress(strided, cal)
    shifted = nn.Sequential(nn.Identity(), nn.Conv2d(3, 4, 3, padding=1)).double()
    with pytest.raises(lance.CalibrationMismatchError, match="Identity"):
        lance.compress(shifted, cal)
    renamed = nn.Sequential()
    renamed.add_module("conv", nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(lance.UnknownLayerError):
        lance.compress(renamed, lance.calibrate(_conv_model(), random_batches((2, 3, 5, 5)), ["0"]))
    with pytest.raises(lance.LanceError, match="lance.Calibration"):
        lance.compress(_conv_model(), {"0": None})


def test_compress_twice_refused():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    lance.compress(model, cal)
    with pytest.raises(lance.LanceError, match="already compressed"):
        lance.compress(model, cal)


def test_load_of_something_else(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"hello": 1}, path)
    with pytest.raises(lance.LanceError, match="not a lance calibration"):
        lance.Calibration.load(path)


def test_trainable_layers_are_last_convs_in_registration_order():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    assert lance.trainable_layers(model, 2) == ["layer4.1.conv1", "layer4.1.conv2"]
    assert lance.trainable_layers(model, 4) == ["layer4.0.conv2", "layer4.0.downsample.0",
                                                "layer4.1.conv1", "layer4.1.conv2"]
    mbv2 = torchvision.models.mobilenet_v2(weights=None)
    last4 = lance.trainable_layers(mbv2, 4)
    assert last4 == ["features.17.conv.0.0", "features.17.conv.1.0", "features.17.conv.2", "features.18.0"]
    assert mbv2.get_submodule("features.17.conv.1.0").groups == 960  # the depthwise one
    # the authors' LANCE selection leaves grouped convolutions frozen and reaches further back
    authors = lance.trainable_layers(mbv2, 4, skip_depthwise=True)
    assert authors == ["features.16.conv.2", "features.17.conv.0.0", "features.17.conv.2", "features.18.0"]
    assert all(mbv2.get_submodule(n).groups == 1 for n in authors)
    assert lance.trainable_layers(model, 4, skip_depthwise=True) == lance.trainable_layers(model, 4)  # no grouped convs


def test_command_line_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from lance.cli import main

    assert main(["latency", "--batch-size", "0", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: batch_size must be a positive whole number") and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


class _Standardised(nn.Conv2d):
    """Weight standardisation: a Conv2d subclass whose forward differs from the plain one."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_compress_refuses_a_subclass_whose_behaviour_it_would_drop():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    sub = _Standardised(3, 4, 3, padding=1)
    sub.load_state_dict(model[0].state_dict())
    model[0] = sub
    with pytest.raises(lance.UnsupportedLayerError, match="_Standardised, a subclass of Conv2d"):
        lance.compress(model, cal)
    assert type(model[0]) is _Standardised  # nothing was swapped


def test_compress_refuses_a_weight_recomputed_by_a_hook():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    with pytest.warns(FutureWarning):
        model[0] = torch.nn.utils.weight_norm(model[0])
    with pytest.raises(lance.UnsupportedLayerError, match="weight_norm"):
        lance.compress(model, cal)


def test_compress_and_decompress_keep_the_layers_hooks():
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    seen = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append("pre"))
    model[0].register_forward_hook(lambda m, args, out: seen.append("post"))
    x = torch.randn(2, 3, 5, 5, dtype=model[0].weight.dtype)
    lance.compress(model, cal)
    model(x)
    lance.decompress(model)
    model(x)
    assert seen == ["pre", "post", "pre", "post"]


def test_half_precision_inputs_are_calibrated_in_float32():
    """A float16 Gram matrix of inputs of this size overflows (NaN eigenvalues, full rank)."""
    model = single_layer_model(nn.Conv2d(3, 8, 3)).half()
    batches = [torch.randn(8, 3, 32, 32).half() * 200 for _ in range(2)]
    half = lance.calibrate(model, batches, ["0"], energy=0.5)
    full = lance.calibrate(model.float(), [b.float() for b in batches], ["0"], energy=0.5)
    assert half["0"].ranks == full["0"].ranks
    assert all(torch.isfinite(m.eigenvalues).all() for m in half["0"].modes if m.eigenvalues is not None)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "edited", "planted"])
def test_a_damaged_or_hostile_calibration_file_is_refused(damage, tmp_path):
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    good, bad, ran = tmp_path / "c.pt", tmp_path / "bad.pt", tmp_path / "ran"
    cal.save(good)
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:300])
    elif damage == "garbage":
        bad.write_bytes(b"not a calibration")
    elif damage == "edited":
        state = torch.load(good, weights_only=True)
        state["layers"]["0"]["modes"][1]["basis"][0, 0] += 1
        torch.save(state, bad)
    else:
        class Planted:
            def __reduce__(self):
                return (open, (str(ran), "w"))
        torch.save({"format": 1, "layers": Planted()}, bad)
    with pytest.raises(lance.LanceError, match="checksum" if damage == "edited" else "loads safely"):
        lance.Calibration.load(bad)
    assert not ran.exists()
    assert lance.Calibration.load(good)["0"].ranks == cal["0"].ranks


def test_a_calibration_made_for_other_weights_is_refused(tmp_path):
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    cal.save(tmp_path / "c.pt", model=model)
    assert lance.Calibration.load(tmp_path / "c.pt", model=model)["0"].ranks == cal["0"].ranks
    with pytest.raises(lance.CalibrationMismatchError, match="other weights"):
        lance.Calibration.load(tmp_path / "c.pt", model=_conv_model())


def _hosvd_case(kind):
    if kind == "long":
        return lance.hosvd(torch.ones(2, 3, dtype=torch.long))
    if kind == "nan":
        return lance.hosvd(torch.full((2, 3), float("nan")))
    if kind == "empty":
        return lance.hosvd(torch.randn(0, 4))
    if kind == "list":
        return lance.hosvd([[1.0, 2.0]])
    if kind == "float rank":
        return lance.hosvd(torch.randn(3, 4), ranks=[1.5, 2])
    return lance.hosvd(torch.randn(3, 4), skip_modes=[5])


@pytest.mark.parametrize("kind", ["long", "nan", "empty", "list", "float rank", "skip mode"])
def test_hosvd_refuses_what_it_cannot_decompose(kind):
    with pytest.raises(lance.LanceError):
        _hosvd_case(kind)


@pytest.mark.parametrize("batches,message", [
    ([None], "is a NoneType"), ([[]], "empty tuple"), (5, "iterable"),
    ([torch.zeros(0, 3, 5, 5)], "is empty"), ([torch.randn(2, 3, 5, 5).half()], "float16 but the model is"),
    ([torch.randn(2, 5, 5, 5, dtype=torch.float64)], "cannot run calibration batch 0"),
])
def test_calibration_batches_the_model_cannot_take(batches, message):
    model = _conv_model().double()
    with pytest.raises(lance.LanceError, match=message):
        lance.calibrate(model, batches, ["0"])


@pytest.mark.parametrize("call", ["calibrate", "compress", "decompress", "trainable_layers"])
def test_a_model_that_is_not_a_module(call):
    args = {"calibrate": ("not a model", [torch.zeros(1)], ["0"]), "compress": ("not a model", None),
            "decompress": (None,), "trainable_layers": ("not a model", 2)}[call]
    with pytest.raises(lance.LanceError):
        getattr(lance, call)(*args)


def test_calibration_files_without_their_checksum_or_model_are_refused(tmp_path):
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    cal.save(tmp_path / "c.pt")
    with pytest.raises(lance.CalibrationMismatchError, match="saved without the model"):
        lance.Calibration.load(tmp_path / "c.pt", model=model)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    del state["sha256"]
    torch.save(state, tmp_path / "nosum.pt")
    with pytest.raises(lance.LanceError, match="no checksum"):
        lance.Calibration.load(tmp_path / "nosum.pt")
    with pytest.raises(lance.LanceError, match="returned a int"):
        lance.compress(model, cal, factory=lambda m, lc: 42)
    with pytest.raises(lance.LanceError, match="compress_batch must be True or False"):
        lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"], compress_batch="False")


def test_calibration_save_to_a_path_it_cannot_write(tmp_path):
    model = _conv_model()
    cal = lance.calibrate(model, random_batches((2, 3, 5, 5)), ["0"])
    (tmp_path / "file").write_text("")
    with pytest.raises(lance.LanceError, match="cannot write to"):
        cal.save(tmp_path / "file" / "c.pt")
    with pytest.raises(lance.LanceError, match="is a folder"):
        cal.save(tmp_path)


def test_api_inputs_the_adversarial_probe_found_unchecked(tmp_path):
    import torch

    from lance.core import hosvd
    from lance.experiments.benchmark import BenchmarkConfig
    from lance.experiments.checkpoints import load_checkpoint
    from lance.experiments.continual import ContinualConfig
    from lance.models import zoo

    with pytest.raises(LanceError, match="unknown method 'ewc'"):
        ContinualConfig(method="ewc")  # refused when built, not only at validate()
    with pytest.raises(LanceError, match="repeated entries"):
        BenchmarkConfig(layer_counts=(2, 2))
    with pytest.raises(LanceError, match="as a list"):
        BenchmarkConfig(layer_counts=5)
    with pytest.raises(LanceError, match="threads must be"):
        BenchmarkConfig(threads=-4)
    with pytest.raises(LanceError, match="weights_dir must be a folder's path"):
        BenchmarkConfig(weights_dir=12345)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(LanceError, match="num_classes must be a positive whole number"):
            zoo.build("resnet18", num_classes=bad, pretrained=False)
    with pytest.raises(LanceError, match="spectrum is empty"):
        hosvd.energy_rank(torch.zeros(0), 0.7)
    with pytest.raises(LanceError, match="mode must be a whole number in"):
        hosvd.unfold(torch.zeros(2, 3), 2)
    with pytest.raises(LanceError, match="does not hold a tensor"):
        hosvd.fold(torch.zeros(2, 3), 0, (2, 4))
    with pytest.raises(LanceError, match="config as a dict"):
        load_checkpoint(tmp_path / "none.pt", "notadict")


def test_compress_takes_one_layer_name_as_a_name_not_as_its_letters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    calib = lance.calibrate(model, [torch.randn(2, 3, 8, 8)], ["0", "2"], energy=0.9, num_batches=1)
    lance.compress(model, calib, "2")
    assert isinstance(model[2], lance.LanceConv2d) and not isinstance(model[0], lance.LanceConv2d)


def test_writes_and_spectra_the_second_probe_found(tmp_path):
    from lance.core import hosvd
    from lance.experiments.finetune import FinetuneConfig, finetune
    from lance.experiments.results import write_atomic

    for text, message in ((None, "writes text"), (b"bytes", "writes text"), ("bad \udce9", "not valid UTF-8")):
        with pytest.raises(LanceError, match=message):
            write_atomic(tmp_path / "x.txt", text)
    assert not any(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(LanceError, match="negative ones"):
        hosvd.energy_rank(torch.tensor([-1.0, -2.0]), 0.5)
    assert hosvd.energy_rank(torch.tensor([3.0, 1.0, -1e-9]), 0.7) == 1  # rounding noise is no error
    with pytest.raises(LanceError, match="out_dir must be a folder's path"):
        finetune(FinetuneConfig(), out_dir=42)


def test_a_json_file_that_is_no_notebook_is_listed_as_failed(tmp_path):
    from lance.book.status import _notebook_status

    (tmp_path / "a.ipynb").write_text('"just a string"')
    (tmp_path / "b.ipynb").write_text('{"metadata": "no", "cells": []}')
    assert not _notebook_status(tmp_path / "a.ipynb")["ok"] and not _notebook_status(tmp_path / "b.ipynb")["ok"]
