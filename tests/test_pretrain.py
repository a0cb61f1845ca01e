"""Split-protocol pretraining: trains, resumes, and its checkpoint feeds fine-tuning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import lance
from lance.experiments.finetune import FinetuneConfig, finetune
from lance.experiments.pretrain import PretrainConfig, pretrain

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATA = os.environ.get("LANCE_DATA_DIR") or (str(SHARED) if SHARED.is_dir() else None)
pytestmark = pytest.mark.skipif(DATA is None or not (Path(DATA) / "cifar-100-python").is_dir(),
                                reason="needs CIFAR-100 (LANCE_DATA_DIR or ../shared/datasets)")


def test_pretrain_then_finetune_on_the_other_classes(tmp_path):
    cfg = PretrainConfig(classes=(0, 5), resolution=32, epochs=2, batch_size=32, train_limit=128)
    rec = pretrain(cfg, data_dir=DATA, out_dir=tmp_path / "w", results_dir=tmp_path / "r", progress=False)
    weights = Path(rec["metrics"]["weights_file"])
    assert weights.is_file() and rec["metrics"]["train_images"] == 128
    on_disk = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert on_disk["metrics"]["weights_sha256"] == rec["metrics"]["weights_sha256"]
    # a second call resumes from the last checkpoint and reproduces the same weights
    again = pretrain(cfg, data_dir=DATA, out_dir=tmp_path / "w", results_dir=None, progress=False)
    assert again["metrics"]["weights_sha256"] == rec["metrics"]["weights_sha256"]
    # its wall time counts the epochs the first call trained
    spent = again["provenance"]["wall_time_s"] - again["provenance"]["wall_time_this_process_s"]
    assert spent >= sum(h["seconds"] for h in rec["metrics"]["history"])
    ft = FinetuneConfig(model="resnet18", dataset="cifar100", method="lance", layers=2, epochs=1, batch_size=16,
                        resolution=32, classes=(5, 10), pretrained=str(weights), train_limit=64, test_limit=32,
                        calibration_batches=2)
    out = finetune(ft, data_dir=DATA, cache_dir=tmp_path / "cache", progress=False, log=lambda *_: None)
    assert out["metrics"]["num_classes"] == 5 and str(weights) in out["metrics"]["weights"]
    assert rec["metrics"]["weights_sha256"] in out["metrics"]["weights"]  # ties the run to its pretraining
    state = torch.load(weights, weights_only=True)
    model = lance.models.build("resnet18", num_classes=5, pretrained=False)
    model.load_state_dict(state)


def test_bad_classes():
    with pytest.raises(lance.LanceError, match="classes"):
        PretrainConfig(classes=(5, 5))


def test_cli_skips_a_pretraining_that_is_done_or_runs_elsewhere(tmp_path, capsys):
    from lance.cli import main
    from lance.experiments.pretrain import checkpoint_name

    args = ["pretrain", "--classes", "0", "5", "--resolution", "32", "--epochs", "1", "--batch-size", "32",
            "--train-limit", "64", "--data-dir", DATA, "--out", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    name = checkpoint_name(PretrainConfig(classes=(0, 5), resolution=32, epochs=1, batch_size=32, train_limit=64))
    lock = tmp_path / "w" / f"{name}.lock"
    lock.parent.mkdir()
    lock.write_text(str(os.getpid()))  # a live process holds the run
    assert main(args) == 0
    assert "another process" in capsys.readouterr().out and not (tmp_path / "r").exists()
    lock.unlink()
    assert main(args) == 0 and not lock.exists()
    result = tmp_path / "r" / f"{name}.json"
    before = result.read_text()
    assert main(args) == 0 and "done already" in capsys.readouterr().out
    assert result.read_text() == before  # not trained again, not overwritten


def test_a_record_of_other_weights_is_kept(tmp_path):
    """Retraining the same configuration elsewhere gives other weights: the earlier record, which
    fine-tuning runs name by its digest, stays and the new one gets its own file."""
    from lance.experiments.pretrain import record_path
    from lance.experiments.results import write_result

    def record(digest):
        return {"config": {}, "metrics": {"weights_sha256": digest}, "provenance": {}}

    name, first, second = "resnet18_x", "ab" * 32, "cd" * 32
    assert record_path(tmp_path, name, first) == tmp_path / f"{name}.json"  # nothing there yet
    write_result(tmp_path / f"{name}.json", record(first))
    assert record_path(tmp_path, name, first) == tmp_path / f"{name}.json"  # the same weights: replaced
    other = record_path(tmp_path, name, second)
    assert other == tmp_path / f"{name}_cdcdcdcd.json"
    cfg = PretrainConfig(classes=(0, 5), resolution=32, epochs=1, batch_size=32, train_limit=64)
    from lance.experiments.pretrain import checkpoint_name

    plain = tmp_path / "r" / f"{checkpoint_name(cfg)}.json"
    write_result(plain, record(first))
    rec = pretrain(cfg, data_dir=DATA, out_dir=tmp_path / "w", results_dir=tmp_path / "r", progress=False)
    digest = rec["metrics"]["weights_sha256"]
    assert json.loads(plain.read_text())["metrics"]["weights_sha256"] == first  # untouched
    kept = tmp_path / "r" / f"{checkpoint_name(cfg)}_{digest[:8]}.json"
    assert json.loads(kept.read_text())["metrics"]["weights_sha256"] == digest
