"""Phase III: the memory criterion, and the property that makes it work: after task t, the
updates of task t+1 leave the layers' outputs on the stored directions unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lance
from lance.core.memory import ContinualMemory, calibrate_in_null_space, gpm_threshold


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, bias=False),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 16), nn.ReLU(),
                         nn.Linear(16, 5)).double()


LAYERS = ["2", "6"]


def _task(seed, n=4, low_rank=True):
    """Batches whose channel / feature content is confined to a task-specific subspace."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, 2 if low_rank else 3, generator=g, dtype=torch.float64)
    out = []
    for _ in range(n):
        z = torch.randn(6, mix.shape[1], 6, 6, generator=g, dtype=torch.float64)
        out.append((torch.einsum("cr,brhw->bchw", mix, z), torch.randint(0, 5, (6,), generator=g)))
    return out


def test_memory_update_follows_the_energy_criterion():
    model = _net()
    memory = ContinualMemory()
    report = memory.update(model, _task(1), LAYERS, threshold=0.9)
    for name in LAYERS:
        m = memory.bases[name]
        assert torch.allclose(m.t() @ m, torch.eye(m.shape[1]), atol=1e-5)
        assert report[name]["captured"] >= 0.9 and report[name]["added"] == m.shape[1]
    before = {k: v.shape[1] for k, v in memory.bases.items()}
    memory.update(model, _task(2), LAYERS, threshold=0.95)
    for name in LAYERS:  # grown, still orthonormal, old directions kept in place
        m = memory.bases[name]
        assert m.shape[1] >= before[name]
        assert torch.allclose(m.t() @ m, torch.eye(m.shape[1]), atol=1e-5)
    assert memory.numel() == sum(m.numel() for m in memory.bases.values())
    assert gpm_threshold(0) == pytest.approx(0.97) and gpm_threshold(5) == pytest.approx(0.985)


@pytest.mark.parametrize("energy", [0.6, 1.0])
def test_updates_of_the_next_task_leave_stored_directions_unchanged(energy):
    model = _net()
    memory = ContinualMemory()
    memory.update(model, _task(1), LAYERS, threshold=0.97)
    cal = calibrate_in_null_space(model, [x for x, _ in _task(2)], LAYERS, memory, energy=energy)
    for name in LAYERS:  # the feature factor (mode 1 of both inputs here) is orthogonal to the memory
        u = cal[name].factors[1]
        assert float((memory.bases[name].double().t() @ u).abs().max()) < 1e-6
    new = lance.compress(copy.deepcopy(model), cal)
    for p in new.parameters():
        p.requires_grad_(False)
    for name in LAYERS:
        new.get_submodule(name).weight.requires_grad_(True)
    x, y = _task(2)[0]
    loss = nn.functional.cross_entropy(new(x), y)
    grads = torch.autograd.grad(loss, [new.get_submodule(n).weight for n in LAYERS])
    for name, g in zip(LAYERS, grads):
        m = memory.bases[name].double()
        if g.dim() == 4:  # conv: every (out, kernel position) slice is orthogonal to M
            assert float(torch.einsum("ocij,ck->okij", g, m).abs().max()) < 1e-10 * float(g.abs().max()) + 1e-14
            # so inputs whose channel vectors lie in span(M) give the same output after the update
            x_m = torch.einsum("ck,bkhw->bchw", m, torch.randn(2, m.shape[1], 5, 5, dtype=torch.float64))
            layer = model.get_submodule(name)
            before = layer(x_m)
            after = nn.functional.conv2d(x_m, layer.weight - 0.1 * g, layer.bias, layer.stride, layer.padding)
            assert torch.allclose(before, after, atol=1e-12)
        else:
            assert float((g @ m).abs().max()) < 1e-10 * float(g.abs().max()) + 1e-14


def test_full_memory_and_grouped_conv_refused():
    model = _net()
    memory = ContinualMemory({"2": torch.eye(8), "6": None})
    with pytest.raises(lance.LanceError, match="no room"):
        calibrate_in_null_space(model, [x for x, _ in _task(2)], ["2"], memory)
    dw = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3)).double()
    with pytest.raises(lance.UnsupportedLayerError, match="grouped"):
        ContinualMemory().update(dw, [torch.randn(2, 3, 5, 5, dtype=torch.float64)], ["0"], 0.9)


def test_limit_survives_save_and_truncate(tmp_path):
    model = _net()
    memory = ContinualMemory()
    memory.update(model, _task(1), LAYERS, threshold=0.97)
    cal = calibrate_in_null_space(model, [x for x, _ in _task(2)], LAYERS, memory, energy=0.5)
    full = cal.truncate(1.0)
    k = memory.bases["2"].shape[1]
    assert full["2"].ranks[1] == 8 - k  # never into the stored directions
    cal.save(tmp_path / "c.pt")
    back = lance.Calibration.load(tmp_path / "c.pt")
    assert back.truncate(1.0)["2"].ranks[1] == 8 - k
