"""lance.experiments.plan: the planned paper-scale runs, matched against result files."""

from __future__ import annotations

import shlex

import pandas as pd
import pytest

from helpers import fake_executed_notebook
from lance.cli import build_parser
from lance.experiments.plan import PLAN, group_summary, plan_status
from lance.experiments.results import write_result


def _finetune(**cfg):
    base = {"model": "mcunet-in2", "dataset": "cifar100", "method": "lance", "layers": 2, "energy": 0.7,
            "epochs": 50, "batch_size": 128, "seed": 42, "classes": None, "train_limit": 0,
            "calibration_batches": 100}
    return {"config": {**base, **cfg}, "metrics": {"accuracy": 1.0}, "provenance": {"commit": "abc"}}


def test_a_run_is_done_only_with_a_full_result_file_of_its_settings(tmp_path):
    write_result(tmp_path / "finetune" / "a.json", _finetune())
    write_result(tmp_path / "finetune" / "b.json", _finetune(method="bp", train_limit=512))  # a demonstration
    write_result(tmp_path / "finetune" / "c.json", _finetune(method="lance", layers=4, energy=0.5, epochs=10))
    # the batch mode left uncompressed: counts only for the plan's run of that setting, not for the paper's
    write_result(tmp_path / "finetune" / "e.json", _finetune(layers=4, batch_size=4, epochs=10, compress_batch=False))
    write_result(tmp_path / "continual" / "d.json", {"config": {"benchmark": "split_cifar100", "method": "gpm",
                                                                 "tasks": 3, "epochs": 10},
                                                      "metrics": {}, "provenance": {}})  # the first 3 tasks only
    status = plan_status(tmp_path)
    assert len(status) == len(PLAN)
    done = status[status.done]
    assert sorted(done.setting) == sorted([
        "model=mcunet-in2, method=lance, layers=2, energy=0.7, calibration_batches=100, dataset=cifar100, "
        "batch_size=128, classes=None, seed=42",
        "model=mcunet-in2, method=lance, layers=4, energy=0.5, calibration_batches=100, batch_size=128, classes=None, "
        "epochs=10",
        "model=mcunet-in2, method=lance, layers=4, energy=0.7, calibration_batches=100, dataset=cifar100, "
        "batch_size=4, classes=None, epochs=10, compress_batch=False",
    ])
    assert "c.json (10 epochs)" in done["result files"].tolist()
    # another seed and the authors' layer selection count for their own groups only
    write_result(tmp_path / "finetune" / "f.json", _finetune(seed=123))
    write_result(tmp_path / "finetune" / "g.json", _finetune(seed=42, skip_depthwise=True))
    again = plan_status(tmp_path)
    newly = set(again[again.done].group) - set(done.group)
    assert newly == {"Seeds 123 and 456: MCUNet, CIFAR-100", "The authors' layer selection (depthwise frozen)"}
    assert again[again.done].group.value_counts()["Table 2: CIFAR-100, ImageNet weights"] == 1
    assert (status[~status.done]["result files"] == "missing").all()
    # a probe of MCUNet's accuracy (another optimiser, no flips, another size) counts for its probe only
    for name, change in (("h", {"optimizer": "table4"}), ("i", {"flip": False}), ("j", {"resolution": 96})):
        write_result(tmp_path / "finetune" / f"{name}.json", _finetune(method="bp", layers=4, epochs=10, **change))
    probed = plan_status(tmp_path)
    newly = probed[probed.done & ~probed.setting.isin(again[again.done].setting)]
    assert set(newly.group) == {"MCUNet's accuracy: one setting changed (10 epochs)"} and len(newly) == 3


def test_a_latency_file_from_before_the_solver_option_counts_as_the_gram_run(tmp_path):
    cfg = {"model": "mcunet-in2", "batch_size": 128, "methods": ["bp", "hosvd", "asi", "lance"]}
    write_result(tmp_path / "latency" / "old.json", {"config": cfg, "metrics": {}, "provenance": {}})
    status = plan_status(tmp_path)
    latency = status[status.group == "Figure 5: latency"].set_index("setting")["result files"]
    assert latency[latency.index.str.contains("hosvd_solver=gram")].tolist() == ["old.json"]
    assert latency[latency.index.str.contains("hosvd_solver=svd")].tolist() == ["missing"]
    write_result(tmp_path / "latency" / "svd.json", {"config": {**cfg, "hosvd_solver": "svd"}, "metrics": {},
                                                      "provenance": {}})
    latency = plan_status(tmp_path).set_index("setting")["result files"]
    assert latency[latency.index.str.contains("hosvd_solver=svd")].tolist() == ["svd.json"]
    assert latency[latency.index.str.contains("hosvd_solver=gram")].tolist() == ["old.json"]


def test_hours_spent_and_the_estimate_for_the_missing_runs(tmp_path):
    for i, (method, hours) in enumerate((("bp", 1.0), ("lance", 3.0))):
        rec = _finetune(method=method)
        rec["provenance"]["wall_time_s"] = hours * 3600
        write_result(tmp_path / "finetune" / f"{i}.json", rec)
    summary = group_summary(plan_status(tmp_path)).set_index("group")
    table2 = summary.loc["Table 2: CIFAR-100, ImageNet weights"]
    assert (table2["done"], table2["planned"]) == (2, 16)
    assert table2["hours spent"] == pytest.approx(4.0)
    assert table2["hours left (estimate)"] == pytest.approx(2.0 * 14)  # the done runs' mean pace
    small = summary.loc["Tables 8-9: small batches"]
    assert small["hours spent"] == 0 and pd.isna(small["hours left (estimate)"])  # no pace to go by


@pytest.mark.parametrize("run", PLAN, ids=lambda r: r.setting())
def test_every_planned_command_is_a_valid_command_line(run):
    args = build_parser().parse_args(shlex.split(run.command)[3:])  # after "python -m lance"
    assert args.func.__name__.endswith(run.command.split()[3])
    # plan --device cuda passes the device on: every planned command takes it
    assert build_parser().parse_args(shlex.split(run.command)[3:] + ["--device", "cuda:1"]).device == "cuda:1"


def test_status_page_lists_the_missing_runs_with_their_commands(tmp_path):
    from lance.book.status import status_page

    fake_executed_notebook(tmp_path / "01_x.ipynb", duration=1.0)
    out = status_page(tmp_path, tmp_path / "status.md")
    text = out.read_text()
    assert "## Paper-scale runs" in text and "| Hours spent | Hours left (estimate) |" in text
    missing = plan_status()
    for row in missing[~missing.done].itertuples():
        assert f"`{row.command}`" in text


def test_plan_command_lists_and_runs_each_missing_command_once(monkeypatch, capsys, tmp_path):
    import lance.experiments.engine as engine
    from lance.cli import main

    # an empty result directory: every run is missing, whatever results the project has committed
    results = ["--results", str(tmp_path)]
    assert main(["plan", "--group", "small batches", *results]) == 0
    out = capsys.readouterr().out
    assert "Tables 8-9: small batches: 0 of" in out and "--batch-sizes 4" in out
    calls = []

    def fake_engine(commands, **options):  # what the engine is handed (tests/test_engine.py runs it)
        calls.extend(engine.lance_argv(c) for c in commands)
        return [engine.Outcome(c, "done", str(i), "", "") for i, c in enumerate(commands)]

    monkeypatch.setattr(engine, "run_commands", fake_engine)
    status = plan_status(tmp_path)
    missing = status[~status.done & status.group.str.contains("small batches")]
    assert len(missing) > 0
    assert main(["plan", "--group", "small batches", "--run", *results]) == 0
    assert [" ".join(c) for c in calls] == [c.split("python -m lance ")[1] for c in dict.fromkeys(missing.command)]
    assert len(calls) < len(missing)  # runs that share a command (a sweep) run it once

    # a run with a result file is neither listed as missing nor run again
    write_result(tmp_path / "finetune" / "a.json", _finetune(batch_size=4, epochs=10))
    calls.clear()
    assert main(["plan", "--group", "small batches", "--run", *results]) == 0
    status = plan_status(tmp_path)
    assert status[status.group.str.contains("small batches")].done.sum() == 1
    assert len(calls) == len(dict.fromkeys(status[~status.done & status.group.str.contains("small batches")].command))
    assert main(["plan", "--group", "no such group", *results]) == 1


def test_the_plan_size_counts_cpu_and_gpu_hours_from_the_result_files(tmp_path):
    from lance.book.running import plan_size, plan_size_markdown

    write_result(tmp_path / "finetune" / "a.json", {**_finetune(), "provenance": {"wall_time_s": 7200.0}})
    write_result(tmp_path / "finetune" / "b.json", {**_finetune(method="bp"),
                                                    "provenance": {"wall_time_s": 3600.0, "device": "cuda:0 (H200)"}})
    table = plan_size(plan_status(tmp_path))
    total = table.iloc[-1]
    assert total["group"] == "all runs" and total["planned"] == len(PLAN) and total["done"] == 2
    assert total["CPU hours"] == pytest.approx(2.0) and total["GPU hours"] == pytest.approx(1.0)
    row = table[table.group == "Table 2: CIFAR-100, ImageNet weights"].iloc[0]
    assert row["hours left (estimate)"] == pytest.approx(1.5 * (row["planned"] - 2))  # the done ones' pace
    text = plan_size_markdown(table)
    assert ":name: tbl-plan-size" in text and "1.0 of the hours were spent on GPUs" in text


def test_a_sweep_takes_every_fine_tuning_field_once_for_all_its_runs():
    import dataclasses

    from lance.cli import _GRID, _sweep_config
    from lance.experiments.finetune import FinetuneConfig

    args = build_parser().parse_args(shlex.split(
        "sweep --models mcunet-in2 --methods bp --layers 4 --optimizer table4 --no-flip --resolution 96 --epochs 10"))
    cfg = _sweep_config(args, "mcunet-in2", 4, 128, 0.7, 0, 42, None, "bp")
    assert (cfg.optimizer, cfg.flip, cfg.resolution, cfg.epochs) == ("table4", False, 96, 10)
    options = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["sweep"]._actions}
    assert {f.name for f in dataclasses.fields(FinetuneConfig)} - set(_GRID) <= options
