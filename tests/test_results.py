"""Result files are written atomically and never silently overwritten."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import os

import pytest

import lance
from lance.errors import LanceError
from lance.experiments import finetune as ft
from lance.experiments.results import load_results, write_result


def _record(acc):
    return {"config": {"method": "lance", "layers": 2}, "metrics": {"accuracy": acc, "nan": float("nan")},
            "provenance": {"commit": "abc"}}


def test_write_refuses_to_overwrite_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_result(path, _record(1.0))
    with pytest.raises(lance.LanceError, match="not replacing it"):
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
    with pytest.raises(LanceError, match="cannot be written as JSON"):
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


def test_finetune_table_separates_settings_and_puts_the_papers_numbers_beside(tmp_path):
    import pandas as pd

    from lance.book import tables

    def record(method, layers, acc, epochs=50, seed=42, classes=None, batch_size=128, train_limit=0, energy=0.7,
               n_cal=100):
        cfg = {"model": "mcunet-in2", "dataset": "cifar100", "method": method, "layers": layers, "energy": energy,
               "epochs": epochs, "batch_size": batch_size, "seed": seed, "classes": classes,
               "train_limit": train_limit, "calibration_batches": n_cal}
        return {"config": cfg, "metrics": {"accuracy": acc, "activation_mb": 1.0, "activation_mb_measured": 1.1,
                                           "train_tflops": 0.001}, "provenance": {"commit": "abc"}}

    write_result(tmp_path / "a.json", record("bp", 2, 60.0))
    write_result(tmp_path / "b.json", record("lance", 2, 50.0))
    write_result(tmp_path / "c.json", record("lance", 2, 54.0, seed=1))  # two seeds: averaged
    write_result(tmp_path / "d.json", record("lance", 2, 40.0, epochs=10))  # fewer epochs: a row of its own
    write_result(tmp_path / "e.json", record("lance", 2, 30.0, train_limit=512))  # a demonstration: left out
    write_result(tmp_path / "f.json", record("bp", 2, 70.0, classes=[50, 100]))  # split protocol
    write_result(tmp_path / "g.json", record("bp", 4, 55.0, batch_size=4))
    write_result(tmp_path / "h.json", record("lance", 2, 20.0, energy=0.5))  # ablations: not in the table
    write_result(tmp_path / "i.json", record("lance", 2, 21.0, n_cal=10))
    nobatch = record("lance", 4, 22.0, batch_size=4)
    nobatch["config"]["compress_batch"] = False  # the batch mode left uncompressed: not the paper's setting
    write_result(tmp_path / "j.json", nobatch)
    results = tables.finetune_results(tmp_path)
    table = tables.finetune_table(results)
    assert list(zip(table.method, table.epochs)) == [("bp", 50), ("lance", 10), ("lance", 50)]
    assert table.acc.tolist() == [60.0, 40.0, 52.0] and table.seeds.tolist() == [1, 1, 2]
    # the spread over seeds: the sample standard deviation of 50 and 54, none for one seed
    assert table["acc sd"].iloc[2] == pytest.approx(2 ** 0.5 * 2) and table["acc sd"].iloc[:2].isna().all()
    from lance.book.paper import paper_finetuning

    paper = paper_finetuning()
    want = paper[(paper.table == "2") & (paper.model == "MCUNet") & (paper.method == "bp") & (paper.layers == 2)
                 & (paper.dataset == "cifar100")].acc.iloc[0]
    assert table["acc (paper)"].iloc[0] == want
    split = tables.finetune_table(results, classes=(50, 100), paper_table="1", paper_dataset="imagenet-split-b")
    assert split.acc.tolist() == [70.0] and pd.isna(split["acc (paper)"].iloc[0])  # the paper has no MCUNet there
    small = tables.finetune_table(results, batch_size=4, paper_table="8")
    want = paper[(paper.table == "8") & (paper.model == "MCUNet") & (paper.method == "bp") & (paper.layers == 4)
                 & (paper.dataset == "cifar100") & (paper.batch_size == 4)].acc.iloc[0]
    assert small.acc.tolist() == [55.0] and small["acc (paper)"].iloc[0] == want


def test_sweep_builds_every_configuration_and_skips_finished_ones(tmp_path, monkeypatch, capsys):
    """`python -m lance sweep` hands the trainer one config per grid point, with the
    split-protocol options, does not rerun a setting whose result file exists, and leaves a
    setting that another running sweep holds to it."""
    import lance.experiments.finetune as ft
    from lance.cli import main

    seen = []
    monkeypatch.setattr(ft, "finetune", lambda cfg, **kw: seen.append(cfg))
    (tmp_path / ft.result_name(ft.FinetuneConfig(model="resnet18", method="bp", layers=2, classes=(50, 100),
                                                 resolution=64, pretrained="w.pt"))).write_text("{}")
    argv = ["sweep", "--models", "resnet18", "--methods", "bp", "lance", "--layers", "2", "4", "--classes", "50",
            "100", "--pretrained", "w.pt", "--resolution", "64", "--out", str(tmp_path), "--no-progress",
            "--checkpoint-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    assert [(c.method, c.layers) for c in seen] == [("lance", 2), ("bp", 4), ("lance", 4)]
    assert all(c.classes == (50, 100) and c.pretrained == "w.pt" and c.resolution == 64 for c in seen)
    assert "done already" in capsys.readouterr().out
    # the classes and the resolution are part of the name, the weights' file name is in its hash
    assert "_c50-100_r64_x" in ft.result_name(seen[0])
    assert all(c.compress_batch for c in seen)
    seen.clear()
    assert main(["sweep", "--methods", "lance", "--layers", "2", "--batch-sizes", "4", "--no-compress-batch",
                 "--out", str(tmp_path), "--no-progress", "--checkpoint-dir", str(tmp_path / "c")]) == 0
    assert [(c.batch_size, c.compress_batch) for c in seen] == [(4, False)]
    assert ft.result_name(seen[0]).endswith("_nobatch.json")
    assert ft.FinetuneConfig(method="bp", compress_batch=False).compress_batch  # BP keeps whole activations
    seen.clear()
    assert main(["sweep", "--methods", "lance", "--layers", "2", "--batch-sizes", "4", "--lrs", "0.01", "0.005",
                 "--out", str(tmp_path), "--no-progress", "--checkpoint-dir", str(tmp_path / "c")]) == 0
    assert [c.lr for c in seen] == [0.01, 0.005] and ft.result_name(seen[0]).endswith("_lr0.01.json")
    assert all(c.lr == ft.DEFAULT_LR for c in [ft.PROFILES["paper"]])
    # a configuration that another live process holds (its lock names a running pid) is left to it;
    # a lock whose process is gone is taken over
    seen.clear()
    locks = tmp_path / "ckpt"
    locks.mkdir()
    held = ft.FinetuneConfig(model="mcunet-in2", method="lance", layers=2)
    (locks / (ft.result_name(held)[:-5] + ".lock")).write_text(str(os.getpid()))
    stale = ft.FinetuneConfig(model="mcunet-in2", method="lance", layers=4)
    (locks / (ft.result_name(stale)[:-5] + ".lock")).write_text("999999999")
    assert main(["sweep", "--methods", "lance", "--layers", "2", "4", "--out", str(tmp_path), "--checkpoint-dir",
                 str(locks), "--no-progress"]) == 0
    assert [c.layers for c in seen] == [4]
    assert "running in another process, skipped here" in capsys.readouterr().out
    assert sorted(p.name for p in locks.iterdir()) == [ft.result_name(held)[:-5] + ".lock"]  # the stale one released


def test_ablation_table_pairs_each_lance_setting_with_bp_of_the_same_length(tmp_path):
    from lance.book import tables

    def record(method, acc, energy=0.7, n_cal=100, epochs=10, layers=2, mb=1.0):
        cfg = {"model": "mcunet-in2", "dataset": "cifar100", "method": method, "layers": layers, "energy": energy,
               "calibration_batches": n_cal, "epochs": epochs, "batch_size": 128, "seed": 42, "classes": None,
               "train_limit": 0}
        return {"config": cfg, "metrics": {"accuracy": acc, "activation_mb": mb, "activation_mb_measured": mb,
                                           "train_tflops": 0.001}, "provenance": {"commit": "abc"}}

    write_result(tmp_path / "a.json", record("bp", 60.0, mb=12.0))
    write_result(tmp_path / "b.json", record("bp", 65.0, epochs=50, mb=12.0))
    write_result(tmp_path / "c.json", record("lance", 50.0, energy=0.5, mb=0.01))
    write_result(tmp_path / "d.json", record("lance", 55.0, energy=0.9, mb=0.2))
    write_result(tmp_path / "e.json", record("lance", 52.0, n_cal=10, mb=0.05))
    write_result(tmp_path / "f.json", record("lance", 59.0, epochs=50))
    write_result(tmp_path / "g.json", record("lance", 11.0, layers=4))  # another setting: left out
    table = tables.ablation_table(tables.finetune_results(tmp_path))
    assert list(zip(table.epochs, table["calibration batches"], table.energy)) == [
        (10, 10, 0.7), (10, 100, 0.5), (10, 100, 0.9), (50, 100, 0.7)]
    assert table.acc.tolist() == [52.0, 50.0, 55.0, 59.0]
    assert table["BP acc"].tolist() == [60.0, 60.0, 60.0, 65.0]
    assert tables.ablation_table(tables.finetune_results(tmp_path / "none")).empty


def test_split_weights_names_the_pretraining_of_each_run(tmp_path):
    """A run that recorded its weights' digest gets that pretraining; an older run without one gets
    the latest pretraining of the same file that started before it, never a later one."""
    import pandas as pd

    from lance.book import tables

    old, new = "11" * 32, "22" * 32
    pre = pd.DataFrame([
        {"config.model": "resnet18", "metrics.weights_sha256": old, "metrics.accuracy": 68.0,
         "metrics.weights_file": "_build/weights/r18.pt", "provenance.timestamp_utc": "2026-11-22T01:00:00+00:00"},
        {"config.model": "resnet18", "metrics.weights_sha256": new, "metrics.accuracy": 69.0,
         "metrics.weights_file": "_build/weights/r18.pt", "provenance.timestamp_utc": "2026-12-01T08:00:00+00:00"},
    ])

    def run(method, when, weights):
        return {"config.model": "resnet18", "config.method": method, "config.layers": 2, "config.epochs": 50,
                "config.classes": [50, 100], "config.pretrained": "_build/weights/r18.pt", "metrics.accuracy": 60.0,
                "metrics.weights": weights, "provenance.timestamp_utc": when}

    results = pd.DataFrame([
        run("bp", "2026-11-22T05:00:00+00:00", "_build/weights/r18.pt (44 bytes)"),  # before digests were kept
        run("hosvd", "2026-12-01T09:00:00+00:00", f"_build/weights/r18.pt (44 bytes, sha256 {new})"),
        run("asi", "2026-11-21T00:00:00+00:00", "_build/weights/r18.pt (44 bytes)"),  # before any pretraining
        {**run("lance", "2026-12-01T09:00:00+00:00", None), "config.classes": None, "config.pretrained": "imagenet"},
    ])
    table = tables.split_weights(results, pre).set_index("method")
    assert list(table.index) == ["bp", "hosvd", "asi"]  # the ImageNet run is no split-protocol run
    assert table.loc["bp", "weights"] == "11111111" and table.loc["bp", "how"] == "by date"
    assert table.loc["bp", "pretraining acc"] == 68.0
    assert table.loc["hosvd", "weights"] == "22222222" and table.loc["hosvd", "how"] == "digest"
    assert table.loc["hosvd", "pretraining acc"] == 69.0
    assert table.loc["asi", "how"] == "unknown" and pd.isna(table.loc["asi", "pretraining acc"])


def test_runs_at_another_learning_rate_have_a_table_of_their_own(tmp_path):
    """The paper's tables take runs at its learning rate only; lr_table sets the rates side by
    side with the first epoch's training accuracy and how far the weights moved."""
    import math

    from lance.book import tables

    def record(method, layers, acc, lr=None, norms=None):
        cfg = {"model": "mcunet-in2", "dataset": "cifar100", "method": method, "layers": layers, "energy": 0.7,
               "epochs": 10, "batch_size": 4, "seed": 42, "classes": None, "train_limit": 0,
               "calibration_batches": 100}
        if lr is not None:
            cfg["lr"] = lr
        history = [{"epoch": 1, "train_acc": acc / 2}, {"epoch": 2, "train_acc": acc}]
        metrics = {"accuracy": acc, "activation_mb": 1.0, "activation_mb_measured": 1.0, "train_tflops": 0.001,
                   "history": history}
        if norms:  # (pretrained, last epoch) per layer
            metrics["weight_norm_initial"] = {n: a for n, (a, _) in norms.items()}
            history[-1]["weight_norm"] = {n: b for n, (_, b) in norms.items()}
        return {"config": cfg, "metrics": metrics, "provenance": {"commit": "abc"}}

    write_result(tmp_path / "a.json", record("lance", 4, 5.0))  # before the norms were recorded, lr 0.05
    write_result(tmp_path / "b.json", record("lance", 4, 50.0, lr=0.01, norms={"x": (2.0, 3.0), "y": (10.0, 12.0)}))
    write_result(tmp_path / "c.json", record("bp", 4, 60.0, lr=0.01, norms={"x": (2.0, 2.2), "y": (10.0, 10.0)}))
    write_result(tmp_path / "d.json", record("bp", 4, 62.0, lr=0.05))
    results = tables.finetune_results(tmp_path)
    # the paper's table: lr 0.05 only (a file without the key was run at 0.05)
    small = tables.finetune_table(results, batch_size=4, paper_table="8")
    assert sorted(zip(small.method, small.acc)) == [("bp", 62.0), ("lance", 5.0)]
    table = tables.lr_table(results)
    assert list(zip(table.lr, table.method)) == [(0.05, "bp"), (0.05, "lance"), (0.01, "bp"), (0.01, "lance")]
    assert table["epoch-1 train acc"].tolist() == [31.0, 2.5, 30.0, 25.0]
    growth = dict(zip(zip(table.lr, table.method), zip(table["largest norm growth"], table.layer)))
    assert growth[(0.01, "lance")] == (1.5, "x") and growth[(0.01, "bp")] == (pytest.approx(1.1), "x")
    assert math.isnan(growth[(0.05, "lance")][0]) or growth[(0.05, "lance")][0] is None
    assert tables.lr_table(results, batch_size=128).empty
    # the norms epoch by epoch, for the figure: only the runs that recorded them, from the pretrained 1.0
    norms = tables.weight_norm_history(results)
    assert sorted(set(norms.file)) == ["b.json", "c.json"]
    x = norms[(norms.file == "b.json") & (norms.layer == "x")]
    assert list(zip(x.epoch, x.ratio)) == [(0, 1.0), (2, 1.5)] and (x.lr == 0.01).all()
    assert tables.weight_norm_history(results, batch_size=128).empty


def test_the_plan_does_not_count_a_run_at_another_learning_rate_as_the_papers(tmp_path):
    from lance.experiments.plan import plan_status

    cfg = {"model": "mcunet-in2", "dataset": "cifar100", "method": "bp", "layers": 2, "energy": 0.7, "epochs": 10,
           "batch_size": 4, "seed": 42, "classes": None, "train_limit": 0, "calibration_batches": 100, "lr": 0.01}
    write_result(tmp_path / "finetune" / "a.json", {"config": cfg, "metrics": {"accuracy": 1.0}, "provenance": {}})
    status = plan_status(tmp_path)
    small = status[status.group == "Tables 8-9: small batches"]
    assert not small.done.any()
    write_result(tmp_path / "finetune" / "b.json", {"config": {**cfg, "lr": 0.05}, "metrics": {"accuracy": 1.0},
                                                    "provenance": {}})
    status = plan_status(tmp_path)
    assert status[status.group == "Tables 8-9: small batches"].done.sum() == 1


def test_bp_lance_gap_subtracts_within_each_group_and_needs_both_papers_numbers():
    import math

    import pandas as pd

    from lance.book import tables

    table = pd.DataFrame([
        {"model": "a", "layers": 2, "method": "bp", "acc": 60.0, "acc (paper)": 61.0},
        {"model": "a", "layers": 2, "method": "lance", "acc": 55.5, "acc (paper)": 59.0},
        {"model": "a", "layers": 4, "method": "bp", "acc": 62.0, "acc (paper)": None},
        {"model": "a", "layers": 4, "method": "lance", "acc": 61.0, "acc (paper)": 60.0},
        {"model": "b", "layers": 2, "method": "bp", "acc": 50.0, "acc (paper)": 50.0},  # no LANCE row: no gap
        {"model": "b", "layers": 2, "method": "asi", "acc": 40.0, "acc (paper)": None},
    ])
    gaps = tables.bp_lance_gap(table, ["model", "layers"]).set_index(["model", "layers"])
    assert list(gaps.index) == [("a", 2), ("a", 4)]
    assert gaps.loc[("a", 2), "gap"] == pytest.approx(4.5) and gaps.loc[("a", 2), "gap (paper)"] == pytest.approx(2.0)
    assert gaps.loc[("a", 4), "gap"] == pytest.approx(1.0) and math.isnan(gaps.loc[("a", 4), "gap (paper)"])
    assert tables.bp_lance_gap(table.iloc[:0], ["model"]).empty


def test_write_atomic_replaces_a_whole_file_only_when_asked(tmp_path):
    from lance.experiments.results import write_atomic

    target = tmp_path / "a.txt"
    target.write_text("old content that is longer")
    with pytest.raises(LanceError, match="exists"):
        write_atomic(target, "new")
    assert target.read_text() == "old content that is longer"
    write_atomic(target, "new", overwrite=True)
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o644


def test_two_writers_of_one_result_the_second_is_refused(tmp_path):
    """No check-then-replace: the claim is the hard link itself, so a second writer that passed
    every earlier check still cannot replace the first one's file."""
    from lance.experiments.results import write_result

    record = {"config": {}, "metrics": {"accuracy": 1.0}, "provenance": {}}
    path = tmp_path / "r.json"
    write_result(path, record)
    with pytest.raises(LanceError, match="another process"):
        write_result(path, {**record, "metrics": {"accuracy": 2.0}})
    assert json.loads(path.read_text())["metrics"]["accuracy"] == 1.0


def test_an_unwritable_result_folder_is_found_before_the_run(tmp_path):
    from lance.experiments.results import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LanceError, match="cannot write to"):
        check_writable(blocker / "sub" / "r.json")


def test_names_the_file_system_cannot_hold_and_folders_nothing_can_be_created_in_are_refused(tmp_path):
    """A NUL byte, a name too long for the folder (with room for the temporary name beside it),
    and /proc, where os.access says yes to root but nothing can be created: one LanceError each,
    before anything is written, and nothing left behind."""
    from lance.experiments.results import check_writable, write_atomic

    for path, message in ((tmp_path / "a\0b.json", "NUL byte"), (tmp_path / ("x" * 300), "bytes long"),
                          (tmp_path / ("x" * 250), "bytes long"), (tmp_path / ("d" * 300) / "r.json", "bytes long"),
                          (Path("/proc/lance-result.json"), "cannot write to /proc")):
        with pytest.raises(LanceError, match=message):
            check_writable(path)
        with pytest.raises(LanceError, match=message):
            write_atomic(path, "text")
    assert not any(tmp_path.iterdir())
    assert write_atomic(tmp_path / ("x" * 200), "fits").read_text() == "fits"
    assert [p.name for p in tmp_path.iterdir()] == ["x" * 200]  # the writability probe left nothing


def test_configurations_that_differ_only_where_the_readable_name_is_silent_get_different_names():
    base = ft.FinetuneConfig(model="mcunet-in2", method="lance", layers=2)
    assert ft.result_name(base) == "mcunet-in2_cifar100_lance_L2_e0.7_bs128_ep50_s42.json"  # committed names stay
    variants = [dict(test_limit=100), dict(pretrained="_build/weights/a.pt"), dict(pretrained="_build/weights/b.pt"),
                dict(cache_cut=6), dict(energy=0.7000001), dict(lr=0.0500001)]
    names = {ft.result_name(dataclasses.replace(base, **v)) for v in variants} | {ft.result_name(base)}
    assert len(names) == len(variants) + 1
    # the weights' folder is not part of the identity, their file name is
    assert (ft.result_name(dataclasses.replace(base, pretrained="/elsewhere/a.pt"))
            == ft.result_name(dataclasses.replace(base, pretrained="_build/weights/a.pt")))


def test_a_checkpoint_from_before_a_new_field_resumes_only_at_the_fields_default(tmp_path):
    from lance.errors import LanceError
    from lance.experiments.checkpoints import load_checkpoint, save_checkpoint

    path = tmp_path / "run.pt"
    save_checkpoint(path, {"epoch": 3}, {"lr": 0.05})  # written before "flip" existed
    assert load_checkpoint(path, {"lr": 0.05, "flip": True}, defaults={"flip": True})["epoch"] == 3
    with pytest.raises(LanceError, match="flip"):
        load_checkpoint(path, {"lr": 0.05, "flip": False}, defaults={"flip": True})
    with pytest.raises(LanceError, match="flip"):  # without the defaults, a missing field is a difference
        load_checkpoint(path, {"lr": 0.05, "flip": True})


def _run(method, layers, acc, *, model="mcunet-in2", epochs=50, seed=42, mb=1.0, ranks=None, **extra):
    cfg = {"model": model, "dataset": "cifar100", "method": method, "layers": layers, "energy": 0.7,
           "epochs": epochs, "batch_size": 128, "seed": seed, "classes": None, "train_limit": 0,
           "calibration_batches": 100, **extra}
    return {"config": cfg, "metrics": {"accuracy": acc, "activation_mb": mb, "activation_mb_measured": mb,
                                       "train_tflops": 0.001, "ranks": ranks or {}, "resolution": 160},
            "provenance": {"commit": "abc"}}


def test_the_gap_has_the_spread_of_its_two_means_and_the_seed_table_one_column_per_seed(tmp_path):
    from lance.book import tables

    for i, (method, seed, acc) in enumerate([("bp", 42, 64.0), ("bp", 123, 66.0), ("lance", 42, 59.0),
                                             ("lance", 123, 60.0), ("lance", 456, 61.0)]):
        write_result(tmp_path / f"{i}.json", _run(method, 2, acc, seed=seed))
    results = tables.finetune_results(tmp_path)
    gap = tables.bp_lance_gap(tables.finetune_table(results), ["layers"]).iloc[0]
    # BP: 65 ± sqrt(2); LANCE: 60 ± 1; the gap's spread sqrt(2 + 1), over the fewer seeds
    assert gap.gap == pytest.approx(5.0) and gap["gap sd"] == pytest.approx(3 ** 0.5) and gap.seeds == 2
    seeds = tables.seed_table(results).set_index("method")
    assert seeds.loc["lance", ["seed 42 acc", "seed 123 acc", "seed 456 acc"]].tolist() == [59.0, 60.0, 61.0]
    assert seeds.loc["bp", "seed 42 acc"] == 64.0 and seeds.loc["bp", "seed 456 acc"] != seeds.loc["bp", "seed 456 acc"]
    assert seeds.loc["lance", "acc sd"] == pytest.approx(1.0) and seeds.loc["bp", "seeds"] == 2


def test_the_calibration_cost_is_its_share_of_the_run_and_runs_that_do_not_record_it_are_left_out(tmp_path):
    from lance.book import tables

    def run(method, seed, cal_s, wall_s):
        r = _run(method, 4, 60.0, seed=seed)
        r["provenance"]["wall_time_s"] = wall_s
        if cal_s is not None:
            r["metrics"]["calibration_s"] = cal_s
        return r

    write_result(tmp_path / "a.json", run("lance", 42, 18.0, 3600.0))
    write_result(tmp_path / "b.json", run("asi", 42, 9.0, 1800.0))
    write_result(tmp_path / "c.json", run("lance", 123, None, 3600.0))  # written before it was recorded
    write_result(tmp_path / "d.json", run("bp", 42, 0.0, 3600.0))  # BP calibrates nothing
    cost = tables.calibration_cost_table(tables.finetune_results(tmp_path)).set_index("method")
    assert sorted(cost.index) == ["asi", "lance"]
    assert cost.loc["lance", "share of the run %"] == pytest.approx(0.5) and cost.loc["asi", "run hours"] == pytest.approx(0.5)
    assert cost.loc["asi", "share of the run %"] == pytest.approx(0.5) and cost.loc["lance", "Phase I seconds"] == 18.0


def test_the_selection_table_sets_the_authors_layers_beside_ours_and_says_whose_memory_is_nearer(tmp_path):
    from lance.book import tables

    mib = 0.04e6 / 2 ** 20  # exactly the paper's MCUNet 2-layer LANCE memory (0.04 MB)
    write_result(tmp_path / "a.json", _run("lance", 2, 59.0, mb=mib, ranks={"b.17.depth_conv": [1], "b.17.pl": [1]}))
    write_result(tmp_path / "b.json", _run("lance", 2, 65.0, mb=3 * mib, skip_depthwise=True,
                                           ranks={"b.17.inverted_bottleneck": [1], "b.17.pl": [1]}))
    write_result(tmp_path / "c.json", _run("lance", 2, 61.0, seed=123, mb=mib))  # another seed: not compared
    row = tables.selection_table(tables.finetune_results(tmp_path)).iloc[0]
    assert (row["acc (ours)"], row["acc (authors)"], row["nearer the paper"]) == (59.0, 65.0, "ours")
    assert "depth_conv" in row["ours: trained"] and "depth_conv" not in row["authors: trained"]
    assert row["MB (paper)"] == 0.04


def test_the_probe_table_names_the_one_setting_each_run_changes(tmp_path):
    from lance.book import tables

    write_result(tmp_path / "a.json", _run("bp", 4, 70.0, epochs=10))
    write_result(tmp_path / "b.json", _run("bp", 4, 66.0, epochs=10, optimizer="table4"))
    write_result(tmp_path / "c.json", _run("bp", 4, 69.0, epochs=10, flip=False))
    write_result(tmp_path / "d.json", _run("bp", 4, 60.0, epochs=10, resolution=96))
    write_result(tmp_path / "e.json", _run("bp", 4, 68.0, epochs=10, model="proxyless-w0.3"))
    write_result(tmp_path / "f.json", _run("bp", 4, 99.0, epochs=50))  # not a 10-epoch probe
    table = tables.probe_table(tables.finetune_results(tmp_path)).set_index("change")
    assert table["vs unchanged"].to_dict() == {"none (Figure 3's BP run)": 0.0, "96 px": -10.0,
                                               "checkpoint proxyless-w0.3": -2.0, "no flips": -1.0,
                                               "plain SGD (Table 4)": -4.0}


def test_every_committed_benchmark_file_reads_and_prints_and_new_ones_have_the_common_form(tmp_path):
    from lance.experiments.benchmark import format_report, read_benchmark, result_record
    from lance.experiments.results import RESULTS_DIR

    files = sorted((RESULTS_DIR / "benchmark").glob("*.json"))
    for path in files:  # the older form, results at the top
        out = read_benchmark(path)
        assert "LANCE benchmark" in format_report(out)
        common = result_record(out)
        assert set(common) == {"config", "metrics", "provenance"} and common["metrics"]["results"] == out["results"]
        write_result(tmp_path / path.name, common)
        assert read_benchmark(tmp_path / path.name) == out  # and the common form reads back the same
    write_result(tmp_path / "other.json", {"config": {}, "metrics": {"accuracy": 1.0}, "provenance": {}})
    with pytest.raises(LanceError, match="not a benchmark result file"):
        read_benchmark(tmp_path / "other.json")


def test_the_step_limit_table_reads_every_benchmark_file_and_its_ratios_are_the_reports():
    import math

    from lance.book.tables import benchmark_label, step_limit_table
    from lance.experiments.benchmark import format_report, load_benchmarks, ratios_to_bp

    benchmarks = load_benchmarks()
    table = step_limit_table(benchmarks)
    for model, out in benchmarks.items():
        for r in ratios_to_bp(out):
            if r["method"] not in ("lance", "floor"):
                continue
            row = table[(table.layers == r["layers"]) & (table.step == ("LANCE" if r["method"] == "lance" else "every rank 1"))
                        & (table.model == benchmark_label(out))]
            assert len(row) == 1 and row["step: time / BP"].iloc[0] == r["step"]
            if r["method"] == "lance":  # the same number the benchmark's report prints
                assert f"step {r['step']:.2f}x (goal" in format_report(out)
    # a file written before the FLOPs were counted: its FLOP columns are missing, not zero
    old = {"config": {"model": "resnet18", "layer_counts": [2]}, "results": [
        {"layers": 2, "method": m, "forward_s": [1.0], "backward_s": [2.0], "step_s": [3.0]} for m in ("bp", "lance")]}
    row = step_limit_table({"resnet18": old}).iloc[0]
    assert row["step: time / BP"] == 1.0 and math.isnan(row["step: FLOPs / BP"])
