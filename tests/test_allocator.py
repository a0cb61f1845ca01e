"""lance.experiments.allocator: freed memory stays in the process (glibc), and provenance says so.

Each case runs in its own process: the allocator of the test process itself is left alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

import lance.models

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the steady allocator is glibc's mallopt")

# 20 tensors of 64 MiB, each filled and freed: under glibc's defaults each is mapped afresh and its
# pages fault in again; a steady allocator reuses the first one's pages
_FAULTS = """
import resource, sys, torch
from lance.experiments import allocator
if sys.argv[1] == "steady":
    print(allocator.steady_allocator(), file=sys.stderr)
torch.zeros(16 << 20)  # the first one, and torch's own start-up allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.zeros(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(kind: str) -> int:
    done = subprocess.run([sys.executable, "-c", _FAULTS, kind], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_steady_allocator_stops_refaulting_freed_memory():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    default, steady = _faults("default"), _faults("steady")
    assert default >= 19 * pages  # every tensor faulted in again
    assert steady <= pages + 256  # at most one tensor's pages, then the same pages again and again


@pytest.mark.skipif(lance.models.weights_file("mcunet-in2") is None,
                    reason="needs the MCUNet weights (LANCE_WEIGHTS_DIR or ../shared/weights)")
@pytest.mark.parametrize("env,expected", [({}, "steady"), ({"LANCE_STEADY_ALLOCATOR": "0"}, "glibc's defaults")])
def test_the_command_line_makes_it_steady_unless_told_not_to_and_provenance_says_which(tmp_path, env, expected):
    out = tmp_path / "latency.json"
    subprocess.run([sys.executable, "-m", "lance", "latency", "--model", "mcunet-in2", "--batch-size", "2",
                    "--layers", "1", "--methods", "bp", "--iterations", "1", "--trials", "1", "--data", "samples",
                    "--threads", "1", "--out", str(out)], env={**os.environ, **env}, check=True, capture_output=True)
    assert json.loads(out.read_text())["provenance"]["allocator"].startswith(expected)


_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.environ.get("LANCE_DATA_DIR") or _SHARED, "cifar-100-python"))
                    or lance.models.weights_file("mobilenet_v2") is None,
                    reason="needs CIFAR-100 (LANCE_DATA_DIR or ../shared/datasets) and the MobileNetV2 weights")
def test_a_run_computes_the_same_numbers_with_either_allocator(tmp_path):
    """The allocator changes where memory comes from, never a result: one small LANCE run under
    each, bit for bit the same losses and accuracies."""
    env = {**os.environ, "LANCE_DATA_DIR": os.environ.get("LANCE_DATA_DIR") or os.path.abspath(_SHARED),
           "OMP_NUM_THREADS": "1"}
    metrics = {}
    for kind, value in (("steady", "1"), ("default", "0")):
        out = tmp_path / kind
        subprocess.run([sys.executable, "-m", "lance", "finetune", "--model", "mobilenet_v2", "--method", "lance",
                        "--layers", "2", "--epochs", "2", "--batch-size", "32", "--resolution", "64",
                        "--train-limit", "96", "--test-limit", "64", "--calibration-batches", "2", "--classes", "50", "60",
                        "--cache-dir", str(tmp_path / f"cache-{kind}"), "--out", str(out),
                        "--checkpoint-dir", str(tmp_path / f"ckpt-{kind}"), "--no-progress"],
                       env={**env, "LANCE_STEADY_ALLOCATOR": value}, check=True, capture_output=True)
        (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
        assert record["provenance"]["allocator"].startswith("steady" if value == "1" else "glibc's defaults")
        metrics[kind] = [(e["train_loss"], e["test_acc"]) for e in record["metrics"]["history"]]
    assert metrics["steady"] == metrics["default"]
