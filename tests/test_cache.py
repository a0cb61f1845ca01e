"""The feature cache changes no result: same logits and gradients with and without it."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import lance
from lance.experiments.cache import FeatureCache, blocks, split_model


@pytest.mark.parametrize("arch,n", [("resnet18", 2), ("resnet18", 4), ("mobilenet_v2", 4)])
def test_suffix_of_cached_prefix_equals_full_model(arch, n):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=7).eval()
    layers = lance.trainable_layers(model, n)
    split = split_model(model, layers[0])
    assert layers[0].startswith(split.cut)
    x = torch.randn(3, 3, 64, 64)
    target = torch.tensor([1, 2, 3])
    head = "fc" if arch == "resnet18" else "classifier"
    params_full = lance.set_trainable(model, layers + [head])
    params_split = lance.set_trainable(split.suffix, layers + [head])
    out_full = model(x)
    out_split = split.suffix(split.prefix(x))
    assert torch.equal(out_full, out_split)
    g_full = torch.autograd.grad(nn.functional.cross_entropy(out_full, target), params_full)
    g_split = torch.autograd.grad(nn.functional.cross_entropy(out_split, target), params_split)
    for a, b in zip(g_full, g_split):
        assert torch.equal(a, b)
    # the prefix leaves the original model untouched and in its mode
    assert model.training is False and blocks(model)[0] in ("conv1", "features.0")


def test_feature_cache_roundtrip_with_flips_and_resume(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    split = split_model(model, "layer4.1.conv1")
    images = torch.randn(10, 3, 32, 32)
    calls = []

    def fetch(idx):
        calls.append(list(idx))
        if len(calls) == 3:  # die once, in the middle of the build
            raise KeyboardInterrupt
        return images[list(idx)]

    cache = FeatureCache(tmp_path, {"test": 1}, n=10, flips=True)
    with pytest.raises(KeyboardInterrupt):
        cache.build(fetch, split.prefix, batch_size=4, progress=False)
    assert not cache.complete
    cache.build(fetch, split.prefix, batch_size=4, progress=False)  # resumes at sample 4
    assert cache.complete and calls[-2][0] == 4
    feats = cache.load()
    got = cache.batch(feats, [0, 5, 9], [0, 1, 0])
    want = torch.stack([split.prefix(images[[0]])[0], split.prefix(images[[5]].flip(-1))[0],
                        split.prefix(images[[9]])[0]])
    # computed in batches of 4 vs one at a time: equal up to float32 rounding of batched kernels,
    # which differs between CPUs (oneDNN picks other kernels; a few 1e-6 on an AMD EPYC) ...
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    # ... and far below what a wrong image or a missing flip would give
    assert not torch.allclose(got[1], split.prefix(images[[5]])[0], rtol=1e-2, atol=1e-2)
    assert not torch.allclose(got[0], want[2], rtol=1e-2, atol=1e-2)
    again = FeatureCache(tmp_path, {"test": 1}, n=10, flips=True)
    assert again.complete and again.dir == cache.dir
    assert FeatureCache(tmp_path, {"test": 2}, n=10, flips=True).dir != cache.dir


def test_a_second_builder_waits_for_the_first_and_reuses_its_cache(tmp_path, monkeypatch):
    """Two sweeps in parallel need the same cache: the second waits while the first holds the
    build lock, then finds the cache complete and computes nothing; a lock of a process that is
    gone is taken over at once."""
    import os

    import lance.experiments.locks

    images = torch.randn(6, 3, 8, 8)
    calls = []

    def prefix(x):
        calls.append(len(x))
        return x.mean(1, keepdim=True)

    cache = FeatureCache(tmp_path, {"test": "lock"}, n=6, flips=True)
    cache.dir.mkdir(parents=True)
    lock = cache.dir / "build.lock"
    lock.write_text(str(os.getpid()))  # a live process (this one) is building it
    waits = []

    def other_process_finishes(seconds):
        waits.append(seconds)
        FeatureCache(tmp_path, {"test": "lock"}, n=6, flips=True)._fill(lambda i: images[list(i)], prefix, 4, False)
        lock.unlink()

    monkeypatch.setattr(lance.experiments.locks.time, "sleep", other_process_finishes)
    before = len(calls)
    cache.build(lambda i: images[list(i)], prefix, batch_size=4, progress=False)
    assert len(waits) == 1 and cache.complete and not lock.exists()
    built_by_other = len(calls) - before
    cache.build(lambda i: images[list(i)], prefix, batch_size=4, progress=False)
    assert len(calls) - before == built_by_other  # nothing computed again
    torch.testing.assert_close(cache.batch(cache.load(), [5], [1]), prefix(images[5:6].flip(-1)))

    # a stale lock (no such process) does not block a build
    stale = FeatureCache(tmp_path, {"test": "stale"}, n=6, flips=False)
    stale.dir.mkdir(parents=True)
    (stale.dir / "build.lock").write_text("999999999")
    monkeypatch.setattr(lance.experiments.locks.time, "sleep", lambda s: pytest.fail("waited for a dead process"))
    stale.build(lambda i: images[list(i)], prefix, batch_size=4, progress=False)
    assert stale.complete and not (stale.dir / "build.lock").exists()


@pytest.mark.parametrize("damage", ["meta", "objects", "short"])
def test_a_damaged_feature_cache_is_refused_in_one_line(damage, tmp_path):
    import json

    import numpy as np

    from lance.errors import LanceError
    from lance.experiments.cache import FeatureCache

    cache = FeatureCache(tmp_path, {"k": 1}, 4, flips=False)
    cache.dir.mkdir(parents=True)
    if damage == "meta":
        cache.meta_path.write_text("{not json")
    else:
        rows = 4 if damage == "objects" else 2
        data = np.empty(rows, dtype=object) if damage == "objects" else np.zeros((rows, 3), np.float32)
        np.save(cache.data_path, data, allow_pickle=True)
        cache.meta_path.write_text(json.dumps({"key": {"k": 1}, "done": 4}))
    with pytest.raises(LanceError, match="damaged|holds"):
        cache.load()
