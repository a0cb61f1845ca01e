"""The continual-learning trainer, its models, benchmarks and metrics (issue 4)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lance.data import tasks as cl_benchmarks
from lance.experiments import continual as cl_train
from lance.data.tasks import Benchmark, Task
from lance.models.continual import AlexNetCL, MLP, ReducedResNet18, build_cl_model
from lance.experiments.continual import ContinualConfig, acc_bwt, cl_result_name, continual, profile_settings
from lance.core.memory import ContinualMemory, memory_gram, project_gradients
from lance.errors import LanceError

REQUIRED = ["config.benchmark", "config.method", "config.epochs", "config.seed", "metrics.acc", "metrics.bwt",
            "metrics.accuracy_matrix", "metrics.memory_mb", "provenance.commit"]


def _get(record, dotted):
    node = record
    for part in dotted.split("."):
        node = node[part]
    return node


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------
def test_acc_and_bwt_by_their_definitions():
    r = np.array([[90.0, 10.0, 12.0],
                  [80.0, 70.0, 11.0],
                  [60.0, 65.0, 50.0]])
    acc, bwt = acc_bwt(r)
    assert acc == pytest.approx((60 + 65 + 50) / 3)
    assert bwt == pytest.approx(((60 - 90) + (65 - 70)) / 2)
    acc1, bwt1 = acc_bwt(np.array([[70.0, 80.0]]))  # one row: joint training, BWT undefined
    assert acc1 == pytest.approx(75.0) and bwt1 is None


# ------------------------------------------------------------------------------------------
# GPM's pieces: patch-space memory and gradient projection
# ------------------------------------------------------------------------------------------
def test_patch_gram_is_the_gram_of_the_unfolded_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 3, 7, 7)
    g = memory_gram(conv, x, "patch")
    cols = []
    xp = F.pad(x, (1, 1, 1, 1))
    for b in range(2):
        for i in range(0, 7, 2):
            for j in range(0, 7, 2):
                cols.append(xp[b, :, i:i + 3, j:j + 3].reshape(-1))
    a = torch.stack(cols, 1).double()
    torch.testing.assert_close(g, a @ a.t(), rtol=1e-5, atol=1e-6)
    lin = nn.Linear(4, 2)
    y = torch.randn(5, 4)
    torch.testing.assert_close(memory_gram(lin, y, "patch"), (y.t() @ y).double(), rtol=1e-6, atol=1e-6)
    with pytest.raises(LanceError, match="memory space"):
        memory_gram(lin, y, "channels")


@pytest.mark.parametrize("space", ["patch", "feature"])
def test_projected_gradient_is_orthogonal_to_the_memory(space):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 5 * 5, 3, bias=False)).double()
    old = [torch.randn(8, 4, 5, 5, dtype=torch.float64)]
    memory = ContinualMemory(space=space)
    memory.update(model, old, ["0", "3"], threshold=0.9)
    model(torch.randn(8, 4, 5, 5, dtype=torch.float64)).pow(2).sum().backward()
    raw = {n: dict(model.named_modules())[n].weight.grad.clone() for n in memory.bases}
    project_gradients(model, memory)
    for name, m in memory.bases.items():
        g = dict(model.named_modules())[name].weight.grad
        m = m.double()
        if space == "patch" or g.dim() == 2:
            on_memory = g.reshape(g.shape[0], -1) @ m
        else:
            on_memory = torch.einsum("ockl,cm->omkl", g, m)
        assert float(on_memory.abs().max()) < 1e-6 * float(raw[name].abs().max())  # bases are float32
        assert not torch.allclose(g, raw[name])  # something was removed


def test_projected_step_keeps_old_outputs():
    """GPM's guarantee: with the old inputs in span(M), a projected step leaves their outputs alone."""
    torch.manual_seed(2)
    layer = nn.Sequential(nn.Linear(20, 7, bias=False)).double()
    old = torch.randn(6, 20, dtype=torch.float64)
    memory = ContinualMemory(space="patch")
    memory.update(layer, [old], ["0"], threshold=1.0)
    before = layer(old).detach()
    layer(torch.randn(10, 20, dtype=torch.float64)).pow(2).sum().backward()
    project_gradients(layer, memory)
    with torch.no_grad():
        layer[0].weight -= 0.5 * layer[0].weight.grad
    torch.testing.assert_close(layer(old), before, rtol=0, atol=1e-6)
    assert float(layer[0].weight.grad.abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def test_models_shapes_heads_and_layers():
    net = AlexNetCL([10] * 3)
    x = torch.randn(4, 3, 32, 32)
    assert net(x, 2).shape == (4, 10)
    assert net.layers() == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert net.fc1.in_features == 1024 and all(m.bias is None for m in (net.conv1, net.fc2))
    assert all(not m.track_running_stats for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    res = ReducedResNet18([10, 10])
    assert res.feature_dim == 640 and res(x, 1).shape == (4, 10)
    mlp = MLP([10] * 5)
    assert len(mlp.heads) == 1 and mlp(torch.randn(3, 784), 4).shape == (3, 10)
    with pytest.raises(LanceError, match="task 5 does not exist"):
        mlp.head(5)
    with pytest.raises(LanceError, match="unknown continual-learning model"):
        build_cl_model("vgg", [10], (3, 32, 32))


# ------------------------------------------------------------------------------------------
# The trainer on a small synthetic benchmark
# ------------------------------------------------------------------------------------------
def _toy_benchmark(tasks=3, n=96, seed=0) -> Benchmark:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(tasks):
        centers = torch.randn(4, 3, 1, 1, generator=g) * 2

        def draw(k):
            y = torch.randint(0, 4, (k,), generator=g)
            x = centers[y] + 0.5 * torch.randn(k, 3, 32, 32, generator=g)
            return x, y
        out.append(Task(f"toy {t}", 4, draw(n), draw(32), draw(40)))
    return Benchmark("split_cifar100", out, (3, 32, 32))


def _config(method, **kw):
    base = dict(method=method, epochs=2, batch_size=16, calibration_batches=2, memory_examples=32)
    base.update(kw)
    return ContinualConfig(**base)


@pytest.mark.parametrize("method", ["lance", "gpm", "finetune", "multitask"])
def test_every_method_writes_a_complete_result(method, tmp_path):
    torch.set_num_threads(1)
    bench = _toy_benchmark()
    record = continual(_config(method), benchmark=bench, out_dir=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [cl_result_name(_config(method))]
    for key in REQUIRED:
        _get(record, key)
    assert record["provenance"]["wall_time_s"] >= sum(t["wall_time_s"] for t in record["metrics"]["tasks"]) > 0
    m = record["metrics"]
    rows = 1 if method == "multitask" else 3
    assert np.array(m["accuracy_matrix"]).shape == (rows, 3)
    assert (m["bwt"] is None) == (method == "multitask")
    if method in ("lance", "gpm"):
        assert m["memory_mb"] > 0
    else:
        assert m["memory_mb"] == 0
    assert m["activation_mb"] == pytest.approx(m["activation_mb_measured"], rel=1e-6)
    if method == "lance":
        assert m["activation_mb"] < m["bp_activation_mb"]
        assert all("ranks" in t for t in m["tasks"][1:])
    with pytest.raises(LanceError, match="exists; pass --force"):
        continual(_config(method), benchmark=bench, out_dir=tmp_path)


@pytest.mark.parametrize("method, space", [("lance", "feature"), ("gpm", "patch"), ("lance", "patch")])
def test_second_task_leaves_first_task_directions_alone(method, space):
    """The property of Phase III (and of GPM): the update of task 2 is orthogonal to the memory
    of task 1, so every constrained layer's output on inputs in span(M) is unchanged; LANCE
    with a patch memory trains patch-space layers whose updates keep off GPM's bases."""
    torch.set_num_threads(1)
    bench = _toy_benchmark(tasks=2)
    c = _config(method, epochs=3, lr=0.05, memory_space=space).validate()
    model = build_cl_model("alexnet", [4, 4], (3, 32, 32), seed=0)
    layers = model.layers()
    memory = ContinualMemory(space=space)
    cl_train._train_task(model, 0, bench.tasks, layers, c, bench, memory, False)
    memory.update(model, [bench.tasks[0].train[0][:32]], layers, threshold=0.97)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in layers}
    cl_train._train_task(model, 1, bench.tasks, layers, c, bench, memory, False)
    moved = 0
    for n in layers:
        delta = (model.get_submodule(n).weight.detach() - before[n]).double()
        m = memory.bases[n].double()
        if delta.dim() == 4 and space == "feature":
            on_memory = torch.einsum("ockl,cm->omkl", delta, m)
        else:
            on_memory = delta.reshape(delta.shape[0], -1) @ m
        scale = max(float(delta.abs().max()), 1e-12)
        moved += scale > 1e-6
        assert float(on_memory.abs().max()) <= 1e-4 * scale + 1e-7, n
    assert moved >= 3  # the later layers did learn


def test_finetune_forgets_where_gpm_does_not():
    """Plain sequential training overwrites task 1; on the same toy tasks GPM keeps it."""
    torch.set_num_threads(1)
    bench = _toy_benchmark(tasks=2, n=160, seed=3)
    out = {m: continual(_config(m, epochs=6, lr=0.05), benchmark=bench)["metrics"]["accuracy_matrix"]
           for m in ("finetune", "gpm")}
    drop = {m: r[0][0] - r[1][0] for m, r in out.items()}
    assert drop["gpm"] <= drop["finetune"] + 1e-9


def test_resume_after_an_interruption_gives_the_same_result(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    bench = _toy_benchmark()
    whole = continual(_config("lance"), benchmark=bench)
    real = cl_train._train_task
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kw)

    monkeypatch.setattr(cl_train, "_train_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        continual(_config("lance"), benchmark=bench, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    monkeypatch.setattr(cl_train, "_train_task", real)
    resumed = continual(_config("lance"), benchmark=bench, checkpoint_dir=tmp_path, out_dir=tmp_path / "out")
    np.testing.assert_allclose(resumed["metrics"]["accuracy_matrix"], whole["metrics"]["accuracy_matrix"])
    assert not list(tmp_path.glob("*.pt"))  # the finished run's checkpoint is removed


def test_command_line_trial_run_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """``--no-save`` writes neither a result file nor a checkpoint (a later run must not resume
    from a trial run); a saving run writes the file and removes its checkpoint, and a second
    call finds it done."""
    from lance.data import tasks as cb
    from lance.cli import main

    monkeypatch.setattr(cb, "build_benchmark", lambda *a, **k: _toy_benchmark(tasks=2, n=48))
    args = ["continual", "--benchmark", "split_cifar100", "--methods", "lance", "--epochs", "1",
            "--batch-size", "16", "--calibration-batches", "2", "--memory-examples", "16",
            "--out", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress"]
    assert main(args + ["--no-save"]) == 0
    assert "split_cifar100 lance: ACC" in capsys.readouterr().out
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
    assert main(args) == 0
    written = list((tmp_path / "results").glob("*.json"))
    assert len(written) == 1 and not any((tmp_path / "ckpt").glob("*.pt"))
    assert main(args) == 0
    assert "done already" in capsys.readouterr().out


def test_bad_input_is_explained():
    with pytest.raises(LanceError, match="unknown method 'ewc'; choose one of lance, gpm"):
        ContinualConfig(method="ewc").validate()
    with pytest.raises(LanceError, match="epochs must be a positive whole number"):
        ContinualConfig(epochs=0).validate()
    with pytest.raises(LanceError, match="unknown benchmark"):
        cl_benchmarks.build_benchmark("split_cifar10")
    with pytest.raises(LanceError, match="unknown profile"):
        profile_settings("split_cifar100", "huge")
    with pytest.raises(LanceError, match="divides 100"):
        cl_benchmarks.split_cifar100(tasks=7)
    bench = _toy_benchmark()
    with pytest.raises(LanceError, match="layer_thresholds has 2 values for 5 layers"):
        continual(_config("gpm", layer_thresholds=(0.9, 0.9)), benchmark=bench)


def test_profiles():
    assert profile_settings("permuted_mnist", "book")["epochs"] == 5  # never raised by the book profile
    assert profile_settings("split_cifar100", "book")["epochs"] == 10
    assert profile_settings("split_cifar100", "smoke")["tasks"] == 3


# ------------------------------------------------------------------------------------------
# Benchmarks
# ------------------------------------------------------------------------------------------
def test_five_datasets_pads_grey_images_and_skips_missing(monkeypatch):
    from lance.data import ImageSet

    def fake_load(name, split, data_dir=None, **kw):
        if name in ("cifar10", "svhn", "notmnist"):
            raise LanceError(f"{name} was not found")
        n = 30 if split == "train" else 10
        g = torch.Generator().manual_seed(len(name))
        return ImageSet(torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, [str(i) for i in range(10)], name, split)

    monkeypatch.setattr(cl_benchmarks.lance_data, "load", fake_load)
    b = cl_benchmarks.five_datasets(val_fraction=0.1)
    assert [t.name for t in b.tasks] == ["mnist", "fashion_mnist"]
    assert b.skipped == ["cifar10", "svhn", "notmnist"]
    x = b.tasks[0].train[0]
    assert x.shape[1:] == (3, 32, 32) and len(b.tasks[0].val[1]) == 3
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated
    with pytest.raises(LanceError, match="cifar10 was not found"):
        cl_benchmarks.five_datasets(skip_missing=False)


def test_permuted_mnist_tasks_are_permutations(monkeypatch):
    from lance.data import ImageSet

    def fake_load(name, split, data_dir=None, **kw):
        n = 50 if split == "train" else 20
        g = torch.Generator().manual_seed(1 if split == "train" else 2)
        return ImageSet(torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, [str(i) for i in range(10)], name, split)

    monkeypatch.setattr(cl_benchmarks.lance_data, "load", fake_load)
    b = cl_benchmarks.permuted_mnist(tasks=3, val_fraction=0.2)
    assert b.shared_head and b.input_shape == (784,)
    a0, a1 = b.tasks[0].test[0], b.tasks[1].test[0]
    assert not torch.equal(a0, a1)
    torch.testing.assert_close(a0.sort(1).values, a1.sort(1).values)  # same pixels, other order


def _cifar_dir():
    d = os.environ.get("LANCE_DATA_DIR")
    return d if d and (Path(d) / "cifar-100-python").exists() else None


@pytest.mark.skipif(_cifar_dir() is None, reason="CIFAR-100 not found in $LANCE_DATA_DIR")
def test_split_cifar100_on_the_real_data():
    b = cl_benchmarks.split_cifar100(data_dir=_cifar_dir())
    assert len(b) == 10
    assert b.describe()[["train", "val", "test"]].drop_duplicates().values.tolist() == [[4750, 250, 1000]]
    assert all(int(t.train[1].max()) == 9 for t in b.tasks)
    x = torch.cat([t.train[0] for t in b.tasks])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_split_miniimagenet_from_an_imagenet_root(tmp_path, monkeypatch):
    """The benchmark's builder on miniImageNet files in their official form (csv files and an
    ImageNet root), three classes split into three tasks."""
    import csv

    from PIL import Image

    from lance.data import miniimagenet

    mini = tmp_path / "miniimagenet"
    mini.mkdir()
    synsets = ["n01532829", "n01558993", "n01704323"]
    for s, syn in enumerate(synsets):
        for n in (1, 2, 3):
            p = tmp_path / "imagenet" / "train" / syn / f"{syn}_{n}.JPEG"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 16), (s * 80, n * 40, 10)).save(p, quality=95)
    for split, syn in zip(("train", "val", "test"), synsets):
        with open(mini / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            w.writerows([(f"{syn}{k:08d}.jpg", syn) for k in (1, 2, 3)])
    monkeypatch.delenv(miniimagenet.IMAGENET_ENV_VAR, raising=False)
    monkeypatch.setattr(miniimagenet, "CL_TRAIN_PER_CLASS", 2)
    b = cl_benchmarks.split_miniimagenet(data_dir=tmp_path, tasks=3, val_fraction=0.0)
    assert b.input_shape == (3, 84, 84) and len(b) == 3
    assert [t.sizes() for t in b.tasks] == [{"train": 2, "val": 0, "test": 1}] * 3
    assert b.tasks[0].train[0].shape == (2, 3, 84, 84)
    with pytest.raises(LanceError, match="cannot be split"):
        cl_benchmarks.split_miniimagenet(data_dir=tmp_path, tasks=2)


def test_continual_table_puts_published_numbers_beside_ours(tmp_path):
    from lance.book import tables
    from lance.experiments.results import write_result

    def record(method, acc, bwt, energy=0.9, tasks=0, benchmark="split_cifar100", skipped=(), threshold=0.97,
               space="", epochs=10):
        cfg = {**ContinualConfig(benchmark=benchmark, method=method, epochs=epochs, energy=energy, tasks=tasks,
                                 threshold_base=threshold, memory_space=space).__dict__, "num_tasks": 10}
        if not space:
            del cfg["memory_space"]  # files written before the choice existed
        # LANCE's cores: task 2 keeps 4*8 + 2*3*5*5 floats, task 3 fewer; task 1 (plain BP) is not counted
        ranks = [{}, {"fc1": [4, 8], "conv1": [2, 3, 5, 5]}, {"fc1": [2, 8]}]
        return {"config": cfg, "metrics": {"acc": acc, "bwt": bwt, "memory_mb": 1.0, "training_mb": 2.0,
                                           "activation_mb": 1.5, "skipped_datasets": list(skipped),
                                           "memory_directions": {"fc1": [1024, 3]},
                                           "tasks": [{"ranks": r} for r in ranks]},
                "provenance": {"commit": "abc"}}

    write_result(tmp_path / "a.json", record("gpm", 60.0, -1.0))
    write_result(tmp_path / "b.json", record("lance", 58.0, -0.5))
    write_result(tmp_path / "c.json", record("lance", 50.0, -0.1, energy=0.7))
    write_result(tmp_path / "d.json", record("lance", 10.0, 0.0, tasks=3))  # a partial run: left out
    write_result(tmp_path / "e.json", record("lance", 55.0, -0.2, threshold=0.8))
    write_result(tmp_path / "f.json", record("gpm", 90.0, -0.3, benchmark="five_datasets", skipped=["svhn"]))
    table = tables.continual_table(tables.continual_results(tmp_path))
    split = table[table.benchmark == "split_cifar100"]
    assert split.method.tolist() == ["lance", "lance", "lance", "gpm"]
    # the default setting first, then the sweeps
    assert split.default.tolist() == [True, False, False, True]
    assert split.ACC.tolist() == [58.0, 50.0, 55.0, 60.0]
    assert split["memory threshold"].tolist()[:3] == ["0.97", "0.97", "0.8"]
    gpm = split[split.method == "gpm"].iloc[0]
    assert gpm["ACC (published)"] == pytest.approx(72.48) and gpm["source"] == "saha2021gpm"
    assert split[split.method == "lance"]["ACC (published)"].tolist() == [71, 71, 71]
    # stored activations: LANCE's largest core sum over tasks 2.., the others' layer inputs
    lance_row = split.iloc[0]
    assert lance_row["stored activations (MiB)"] == pytest.approx((4 * 8 + 2 * 3 * 5 * 5) * 4 / 2 ** 20)
    assert gpm["stored activations (MiB)"] == 1.5
    # a benchmark run without some of its datasets is not put beside the published numbers
    five = table[table.benchmark == "five_datasets"].iloc[0]
    assert five["missing datasets"] == "svhn" and pd.isna(five["ACC (published)"])
    # the memory per layer: the default-setting runs of the benchmark only
    by_layer = tables.memory_by_layer(tables.continual_results(tmp_path))
    assert sorted(by_layer.method) == ["gpm", "lance"] and by_layer.MiB.tolist() == [1024 * 3 * 4 / 2 ** 20] * 2
    # LANCE with a patch memory: its own row, not the default; the space table puts the three side by side
    # at the budget all of them reached
    write_result(tmp_path / "g.json", record("lance", 61.0, 0.0, space="patch"))
    write_result(tmp_path / "h.json", record("lance", 63.0, 0.0, space="patch", epochs=50))
    write_result(tmp_path / "i.json", record("gpm", 60.0, -1.0, space="patch"))  # a second seed of GPM's cell
    table = tables.continual_table(tables.continual_results(tmp_path))
    patch = table[(table.method == "lance") & (table["memory space"] == "patch")]
    assert len(patch) == 2 and not patch.default.any() and patch["default, any space"].all()
    assert len(tables.continual_main(table)[lambda t: t.benchmark == "split_cifar100"]) == 2
    space = tables.memory_space_table(table)
    assert space.run.tolist() == ["LANCE, channel memory (C)", "LANCE, patch memory (C·k·k)",
                                  "GPM, patch memory (C·k·k)"]
    assert space["epochs (max/task)"].tolist() == [10, 10, 10] and space.ACC.tolist() == [58.0, 61.0, 60.0]
    claims = tables.memory_claims(space).set_index("memory")
    assert claims.loc["between tasks", "GPM ÷ LANCE (channel)"] == pytest.approx(1.0)
    assert claims.loc["stored activations", "GPM ÷ LANCE (patch)"] == pytest.approx(
        1.5 / ((4 * 8 + 2 * 3 * 5 * 5) * 4 / 2 ** 20))
    assert tables.memory_space_table(table.iloc[:0]).empty


def test_flat_inputs_are_standardised_globally():
    """A pixel that is 0 in all but one training image must not be blown up by its own tiny
    standard deviation (it was, per feature: Permuted MNIST's borders)."""
    x = torch.zeros(1000, 4)
    x[:, :3] = torch.rand(1000, 3)
    x[0, 3] = 1.0
    test = torch.zeros(2, 4)
    test[1, 3] = 1.0
    tr, te = cl_benchmarks._standardise(x, test)
    assert float(tr.abs().max()) < 10 and float(te.abs().max()) < 10
    assert float(tr.mean()) == pytest.approx(0, abs=1e-5) and float(tr.std()) == pytest.approx(1, abs=1e-4)
    img = torch.rand(10, 3, 4, 4) * torch.tensor([1.0, 5.0, 10.0]).view(1, 3, 1, 1)
    (s,) = cl_benchmarks._standardise(img)
    torch.testing.assert_close(s.std(dim=(0, 2, 3)), torch.ones(3), rtol=1e-4, atol=1e-4)  # images: per channel
