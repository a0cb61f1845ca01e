"""Bad input at the command line, one case per class of mistake: each gets exit status 2 and one
line that starts with ``error:``, no traceback, before any dataset is read, and no file is written.

The cases are what a user types by mistake (numbers out of range, unknown names, missing or
foreign files, unwritable outputs), taken from an adversarial pass over every command.
"""

from __future__ import annotations

import re

import pytest
import torch

import lance
import lance.data
import lance.data.catalog
from lance.cli import main


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a dataset is read: the error must come before that."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a dataset was loaded before the bad input was refused")
    monkeypatch.setattr(lance.data, "load", forbidden)
    monkeypatch.setattr(lance.data.catalog, "load", forbidden)
    monkeypatch.setattr("lance.data.tasks.build_benchmark", forbidden)
    monkeypatch.setattr("lance.experiments.continual.build_benchmark", forbidden)


def _files(tmp_path):
    """Weights files a user might pass: another model's, a non-state-dict, a pickle with code."""
    import torchvision

    other = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_dict)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return {"OTHER": str(other), "LIST": str(not_a_dict), "BLOCKER": str(blocker / "out"),
            "MISSING": str(tmp_path / "missing.pt")}


class _Planted:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))  # creates the file when unpickled


FINETUNE = [
    (["--epochs", "0"], "epochs must be a positive whole number"),
    (["--batch-size", "0"], "batch_size must be a positive"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "-1"], "lr must be a finite number >= 0"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--resolution", "-1"], "resolution must be 0 .* or a size in px from 32"),
    (["--resolution", "1"], "resolution must be 0 .* or a size in px from 32"),
    (["--epochs", "100000000000000000000"], "epochs must be at most 100000"),
    (["--lr", "1e300"], r"lr must be at most 1e\+38"),
    (["--classes", "0", "1"], "a classifier needs two classes at least"),
    (["--train-limit", "-1"], "train_limit must be a whole number >= 0"),
    (["--test-limit", "-5"], "test_limit must be a whole number >= 0"),
    (["--model", "../../evil"], "unknown model"),
    (["--model", "resnet1000"], "unknown model"),
    (["--dataset", "imagenet22k"], "unknown dataset"),
    (["--energy", "1.5"], r"energy must be in \(0, 1\]"),
    (["--energy", "0"], r"energy must be in \(0, 1\]"),
    (["--energy", "nan"], r"energy must be in \(0, 1\]"),
    (["--hosvd-energy", "-0.1"], r"hosvd_energy must be in \(0, 1\]"),
    (["--classes", "5", "2"], "classes must be two whole numbers"),
    (["--classes", "-1", "5"], "classes must be two whole numbers"),
    (["--classes", "90", "120"], "reaches past the 100 classes"),
    (["--calibration-batches", "0"], "calibration_batches must be a positive"),
    (["--method", "lance", "--train-limit", "1280", "--batch-size", "128", "--calibration-batches", "11"],
     "--calibration-batches 11 needs 11 batches of 128, but --train-limit 1280 gives at most 10"),
    (["--train-limit", "100", "--batch-size", "128"], "--train-limit 100 is fewer than one batch of 128"),
    (["--method", "asi", "--calibration-batches", "400"],  # no --train-limit: the split's published size
     "--calibration-batches 400 needs 400 batches of 128, but the 50000 training images of cifar100 give at most 390"),
    (["--layers", "0"], "layers must be a positive"),
    (["--layers", "1000"], "fewer than the 1000 requested"),
    (["--seed", "-1"], "seed must be a whole number"),
    (["--pretrained", "MISSING"], "not found"),
    (["--pretrained", "OTHER"], "does not fit mobilenet_v2"),
    (["--pretrained", "LIST"], "is not a state_dict"),
    (["--pretrained", "PLANTED"], "not a plain tensor file"),
    (["--out", "BLOCKER"], "cannot write to"),
    (["--device", "tpu"], "unknown device"),
]
SWEEP = [
    (["--epochs", "-3"], "epochs must be a positive"),
    (["--layers", "2", "0"], "layers must be a positive"),
    (["--models", "mcunet-in2", "nope"], "unknown model"),
    (["--seeds", "42", "-1"], "seed must be a whole number"),
    (["--lrs", "nan"], "lr must be a finite"),
    (["--energies", "0.7", "1.2"], r"energy must be in \(0, 1\]"),
    (["--batch-sizes", "0"], "batch_size must be a positive"),
    (["--resolution", "-2"], "resolution must be 0 .* or a size in px from 32"),
    (["--device", "gpu0"], "unknown device"),
    (["--layers", "2", "2"], "--layers has repeated entries"),
    (["--seeds", "42", "42"], "--seeds has repeated entries"),
]
PRETRAIN = [
    (["--epochs", "0"], "epochs must be a positive"),
    (["--classes", "5", "5"], "classes must be two whole numbers"),
    (["--model", "nope"], "unknown model"),
    (["--lr", "inf"], "lr must be a finite number > 0"),
    (["--batch-size", "0"], "batch_size must be a positive"),
    (["--resolution", "0"], "resolution must be a positive"),
    (["--train-limit", "-1"], "train_limit must be a whole number >= 0"),
    (["--dataset", "nope"], "unknown dataset"),
]
CONTINUAL = [
    (["--tasks", "-2"], "tasks must be a whole number >= 0"),
    (["--epochs", "0"], "epochs must be a positive"),
    (["--train-limit", "-1"], "train_limit must be a whole number >= 0"),
    (["--energy", "2"], r"energy must be in \(0, 1\]"),
    (["--batch-size", "0"], "batch_size must be a positive"),
    (["--lr", "-0.1"], "lr must be a finite number > 0"),
    (["--lr-factor", "1"], "lr_factor must be a finite number > 1"),
    (["--val-fraction", "1"], r"val_fraction must be in \[0, 1\)"),
    (["--layer-thresholds", "0.9", "1.5"], r"layer_thresholds must be in \(0, 1\]"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'; choose one of"),
    (["--methods", "lance", "lance"], "--methods has repeated entries"),
    (["--calibration-batches", "0"], "calibration_batches must be a positive"),
    (["--memory-examples", "0"], "memory_examples must be a positive"),
    (["--seed", "-4"], "seed must be a whole number"),
    (["--model", "../x"], "unknown model '../x'; choose one of alexnet"),
]
LATENCY = [
    (["--batch-size", "0"], "batch_size must be a positive whole number"),
    (["--model", "nope"], "unknown model"),
    (["--energy", "1.5"], r"\(0, 1\]"),
    (["--device", "cuda:x"], "unknown device"),
]
BENCHMARK = [
    (["--device", "npu"], "unknown device"),
    (["--model", "nope"], "unknown model"),
    (["--layers", "2", "2"], "layer_counts has repeated entries"),
    (["--threads", "-4"], "--threads must be 0"),
    (["--resolution", "1"], "resolution must be 0"),
    (["--pretrained", "MISSING"], "not found"),
    (["--pretrained", "LIST"], "is not a state_dict"),
    (["--pretrained", "PLANTED"], "not a plain tensor file"),
    (["--model", "mobilenet_v2", "--pretrained", "OTHER"], "does not fit mobilenet_v2"),
]
CASES = ([("finetune", a, m) for a, m in FINETUNE] + [("sweep", a, m) for a, m in SWEEP]
         + [("pretrain", a, m) for a, m in PRETRAIN] + [("continual", a, m) for a, m in CONTINUAL]
         + [("latency", a, m) for a, m in LATENCY] + [("benchmark", a, m) for a, m in BENCHMARK])


@pytest.mark.parametrize("command,argv,message", CASES,
                         ids=[f"{c}{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_gets_one_line_and_status_2(command, argv, message, tmp_path, capsys, no_data):
    files = _files(tmp_path)
    planted, ran = tmp_path / "planted.pt", tmp_path / "the-pickle-ran"
    torch.save({"features.0.0.weight": _Planted(ran)}, planted)
    files["PLANTED"] = str(planted)
    out = tmp_path / "results"
    argv = [files.get(a, a) for a in argv]
    full = [command, *argv]
    if command in ("finetune", "sweep", "pretrain", "continual") and "--out" not in argv:
        full += ["--out", str(out)]
    if command in ("finetune", "sweep", "continual"):
        full += ["--checkpoint-dir", str(tmp_path / "ckpt")]
    if command == "pretrain":
        full += ["--results", str(tmp_path / "records")]
    if command in ("latency", "benchmark"):
        full += ["--out", str(out / f"{command}.json")]
    assert main(full) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error:")
    assert re.search(message, err), err
    assert not ran.exists()
    assert not out.exists() or not any(out.rglob("*.json"))


def test_a_sweep_reports_a_failing_run_in_one_line_and_goes_on(tmp_path, capsys, monkeypatch):
    """One run's LanceError (here: a diverged run) is one line in the log; the others still run."""
    import lance.experiments.finetune as ft
    from lance.errors import DivergedError

    ran = []

    def fake(cfg, **kwargs):
        ran.append(cfg.layers)
        if cfg.layers == 2:
            raise DivergedError("the training loss became nan at epoch 1, step 3")

    monkeypatch.setattr(ft, "finetune", fake)
    status = main(["sweep", "--methods", "bp", "--layers", "2", "4", "--out", str(tmp_path / "r"),
                   "--checkpoint-dir", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and ran == [2, 4]
    assert "Traceback" not in err and err.count("\n") == 1 and "became nan" in err


MORE_CLI = [
    ("glance", ["RF/g.md"], "cannot write to"),
    ("status-page", ["/nonexistent-folder", "OUT"], "is not a folder of executed notebooks"),
    ("continual", ["--threads", "-1"], "--threads must be 0"),
    ("continual", ["--lr", "inf"], "lr must be a finite number"),
    ("finetune", ["--weights-dir", "/nonexistent-folder"], "--weights-dir /nonexistent-folder is not a folder"),
    ("finetune", ["--cache-dir", "RF/c"], "cannot write to"),
    ("finetune", ["--seed", "99999999999999999999"], r"seed must be a whole number in \[0, 2\*\*32\)"),
    ("benchmark", ["--out", "RF"], "exists; pass --force"),
    ("plan", ["--run", "--time-min", "0", "--executor", "slurm"], "--time-min and --jobs must be at least 1"),
    ("plan", ["--run", "--gpus", "-1", "--executor", "slurm"], "--gpus at least 0"),
    ("plan", ["--device", "tpu"], "unknown device 'tpu'"),
    ("plan", ["--plan", "UNQUOTED"], "cannot be split into words"),
]


@pytest.mark.parametrize("command,argv,message", MORE_CLI, ids=[f"{c} {' '.join(a)}" for c, a, _ in MORE_CLI])
def test_more_bad_paths_and_numbers(command, argv, message, tmp_path, capsys, no_data):
    rf = tmp_path / "a-file"
    rf.write_text("")
    unquoted = tmp_path / "plan.json"
    unquoted.write_text('[{"group": "g", "kind": "finetune", "command": "python -m lance sweep --pretrained \'a"}]')
    argv = [a.replace("RF", str(rf)).replace("OUT", str(tmp_path / "s.md")).replace("UNQUOTED", str(unquoted))
            for a in argv]
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and re.search(message, err), err


def test_a_result_of_another_configuration_is_not_taken_for_done(tmp_path, capsys, monkeypatch):
    import lance.experiments.finetune as ft
    from lance.experiments.results import write_result

    cfg = ft.FinetuneConfig(model="mcunet-in2", method="bp", layers=2)
    write_result(tmp_path / ft.result_name(cfg), {"config": {**__import__("dataclasses").asdict(cfg), "lr": 0.01},
                                                  "metrics": {}, "provenance": {}})
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: pytest.fail("must not run"))
    assert main(["sweep", "--methods", "bp", "--layers", "2", "--out", str(tmp_path),
                 "--checkpoint-dir", str(tmp_path / "c")]) == 2
    assert "another configuration (lr: 0.01 there, 0.05 now)" in capsys.readouterr().err


def _foreign_checkpoint_cases(tmp_path):
    """(run, path of its checkpoint, its config) for fine-tuning, continual learning and pretraining."""
    from lance.experiments.continual import ContinualConfig, cl_result_name, continual
    from lance.experiments.finetune import FinetuneConfig, finetune, result_name
    from lance.experiments.pretrain import PretrainConfig, checkpoint_name, pretrain

    ft, cl, pt = FinetuneConfig(method="lance", epochs=2), ContinualConfig(method="lance"), PretrainConfig(epochs=2)
    return {
        "finetune": (lambda: finetune(ft, checkpoint_dir=tmp_path, progress=False),
                     tmp_path / (result_name(ft)[:-5] + ".pt"), ft),
        "continual": (lambda: continual(cl, checkpoint_dir=tmp_path),
                      tmp_path / cl_result_name(cl).replace(".json", ".pt"), cl),
        "pretrain": (lambda: pretrain(pt, out_dir=tmp_path, results_dir=None, progress=False),
                     tmp_path / f"{checkpoint_name(pt)}.ckpt", pt),
    }


@pytest.mark.parametrize("driver", ["finetune", "continual", "pretrain"])
def test_another_runs_checkpoint_is_refused_before_any_data_is_read(driver, tmp_path, no_data):
    """A checkpoint under the run's name written for another configuration (here: another seed,
    which the file name of a planted or renamed file need not show) is refused at once, with what
    differs, and left in place."""
    import dataclasses

    from lance.experiments.checkpoints import save_checkpoint

    run, path, cfg = _foreign_checkpoint_cases(tmp_path)[driver]
    save_checkpoint(path, {"epoch": 1}, {**dataclasses.asdict(cfg), "seed": 7})
    with pytest.raises(lance.LanceError, match=rf"another configuration \(seed: 7 there, {cfg.seed} now\)"):
        run()
    assert path.exists()
