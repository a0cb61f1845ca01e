"""Running anywhere: ``--device`` is checked before any data is loaded, and the code that runs on
the device creates its tensors on the device of its inputs (nothing hard-codes the CPU).

This machine has no GPU; the same runs on one are the job of `python -m lance ... --device cuda`
where a GPU is lent (see the book's "Running the paper's plan" page)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lance.errors import LanceError
from lance.experiments.device import device_name, resolve_device

PACKAGE = Path(__file__).resolve().parents[1] / "lance"
FACTORIES = {"zeros", "ones", "eye", "empty", "full", "arange", "linspace", "randn", "rand", "randint",
             "randperm", "tensor", "zeros_like", "ones_like", "empty_like"}
ON_DEVICE = ["core", "analysis"]  # everything here runs on the inputs' device


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_name(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("name,message", [("tpu", "unknown device"), ("cuda:x", "unknown device"),
                                          ("", "unknown device")])
def test_unknown_devices_are_refused(name, message):
    with pytest.raises(LanceError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
@pytest.mark.parametrize("command", ["finetune", "sweep", "pretrain", "continual", "latency", "benchmark"])
def test_a_missing_gpu_is_refused_in_one_line_by_every_command_that_computes(command, name, capsys, tmp_path):
    from lance.cli import main

    out = ["--out", str(tmp_path / "out")] if command != "benchmark" else []
    before = set(tmp_path.rglob("*"))
    assert main([command, "--device", name, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device") and "no CUDA GPU" in err and err.count("\n") == 1
    assert set(tmp_path.rglob("*")) == before  # nothing written


def _created_on_cpu(tree: ast.AST) -> list[int]:
    """Lines where torch.<factory>(...) makes a tensor without device= and without .to(...) after."""
    moved = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to":
            moved.add(id(node.func.value))
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            kinds = {k.arg for k in node.keywords}
            if "device" in kinds or id(node) in moved or node.func.attr.endswith("_like"):
                continue
            if "generator" in kinds and node.func.attr in ("randperm", "randint"):
                continue  # index permutations: CPU by design, they index CPU-side data
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(p for d in ON_DEVICE for p in (PACKAGE / d).glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_core_and_the_analysis_create_tensors_on_their_inputs_device(path):
    lines = _created_on_cpu(ast.parse(path.read_text(encoding="utf-8")))
    assert not lines, f"{path.name}: tensors created on the CPU at lines {lines}; pass device=x.device"


def test_the_checker_sees_a_cpu_tensor():
    assert _created_on_cpu(ast.parse("import torch\ndef f(x):\n    return x + torch.zeros(3)\n")) == [3]
    assert _created_on_cpu(ast.parse("def f(x):\n    return torch.zeros(3, device=x.device)\n")) == []
