"""Memory and FLOPs of training the selected layers, analytic (paper App. C) and measured.

Analytic (``activation_memory``): for each trainable layer, what plain backprop keeps for
its weight gradient (the layer input, ``bp_bytes``) and what LANCE keeps (core plus
factors, ``lance_bytes``), at 4 bytes per float32 element as the paper counts; and the
multiply-accumulate FLOPs (2 per MAC) of forward and backward for both. Bias additions and
other element-wise work are not counted, as in ``torch.utils.flop_counter``.

Measured (``saved_tensors``): every tensor autograd actually saves for backward, caught
with ``torch.autograd.graph.saved_tensors_hooks`` and attributed to the innermost module
whose forward saved it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lance.core.calibration import Calibration
from lance.errors import BatchSizeError
from lance.core.hosvd import merges_last_two, projection_order
from lance.core.layers import ConvGeometry, LanceLayer
from lance.core.selection import resolve_layers

__all__ = ["activation_memory", "saved_tensors", "measured_bytes", "step_breakdown", "layer_shapes",
           "paper_convention_tmacs", "paper_hosvd_tmacs", "MIB", "STEP_KINDS"]

MIB = 2 ** 20


@dataclass
class _Shapes:
    input: tuple[int, ...]
    output: tuple[int, ...]


def layer_shapes(model: nn.Module, layers: Sequence[str], input_size: Sequence[int],
                 batch_size: int) -> dict[str, _Shapes]:
    """Input and output shapes of the named layers for a batch of ``batch_size``, found by
    running two zero samples through the model (eval mode, no gradients; two, because a
    BatchNorm without running statistics needs more than one value per channel)."""
    modules = resolve_layers(model, layers)
    found: dict[str, _Shapes] = {}
    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=name: found.__setitem__(name, _Shapes(tuple(args[0].shape), tuple(out.shape))))
        for name, m in modules.items()]
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((2, *input_size), dtype=dtype, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    scale = lambda s: (batch_size,) + tuple(s[1:])  # noqa: E731
    return {name: _Shapes(scale(found[name].input), scale(found[name].output)) for name in modules}


def _chain_flops(shape: Sequence[int], factors_out: Sequence[Optional[int]], order: Sequence[int]) -> tuple[int, list[int]]:
    """FLOPs of the mode products ``shape[m] -> factors_out[m]`` applied in ``order``."""
    shape = list(shape)
    flops = 0
    for m in order:
        flops += 2 * factors_out[m] * prod(shape)
        shape[m] = factors_out[m]
    return flops, shape


def _projection_flops(shape: Sequence[int], ranks: Sequence[Optional[int]]) -> tuple[int, list[int]]:
    """FLOPs and core shape of ``lance.core.hosvd.project`` on a contiguous tensor of ``shape``: the
    last two modes of a 4-D tensor taken as one when both are compressed, as ``project`` does."""
    if merges_last_two(shape, ranks):
        merged, r = [shape[0], shape[1], shape[2] * shape[3]], [ranks[0], ranks[1], ranks[2] * ranks[3]]
        flops, core = _chain_flops(merged, r, projection_order(merged, r))
        return flops, [core[0], core[1], ranks[2], ranks[3]]
    return _chain_flops(shape, ranks, projection_order(shape, ranks))


def _pointwise_wgrad_flops(module: nn.Module, shapes: _Shapes, ranks: Sequence[Optional[int]]) -> int:
    """The weight gradient of a 1x1 convolution without padding from its core
    (``lance.core.layers._pointwise_weight_grad_from_core``): the output gradient projected on the
    batch and spatial factors, contracted with the core, then the channel factor."""
    x, y = shapes.input, shapes.output
    r_b, r_c, r_h, r_w = ranks
    out_ch = module.weight.shape[0]
    flops, _ = _projection_flops(y, [r_b, None, r_h, r_w])
    core = [x[0] if r_b is None else r_b, x[1] if r_c is None else r_c, y[2] if r_h is None else r_h,
            y[3] if r_w is None else r_w]
    flops += 2 * out_ch * prod(core)
    return flops + (2 * out_ch * r_c * x[1] if r_c is not None else 0)


def _patch_flops(module: nn.Module, shapes: _Shapes, ranks: Sequence[Optional[int]], fwd: int,
                 input_grad: bool) -> dict[str, int]:
    """LANCE's FLOPs for a conv calibrated in the patch space (``LancePatchConv2d``): the batch
    projection of the input, its unfolding into patches (a copy, no FLOPs), the patch and position
    projections; backward: the output gradient projected on the batch and position factors,
    contracted with the core, then the patch factor."""
    x, y = shapes.input, shapes.output
    r_b, r_p, r_l = ranks
    out_ch, cin, kh, kw = module.weight.shape
    positions = y[2] * y[3]
    proj = 0 if r_b is None else 2 * r_b * prod(x)
    nb = x[0] if r_b is None else r_b
    patches = [nb, cin * kh * kw, positions]
    f, core = _chain_flops(patches, [None, r_p, r_l], projection_order(patches, [None, r_p, r_l]))
    proj += f
    dy = [y[0], out_ch, positions]
    f, _ = _chain_flops(dy, [r_b, None, r_l], projection_order(dy, [r_b, None, r_l]))
    bwd = (fwd if input_grad else 0) + f + 2 * out_ch * prod(core)
    if r_p is not None:
        bwd += 2 * out_ch * r_p * cin * kh * kw
    return {"lance_fwd_flops": fwd + proj, "lance_bwd_flops": bwd,
            "lance_wgrad_flops": bwd - (fwd if input_grad else 0)}


def _layer_flops(kind: str, module: nn.Module, shapes: _Shapes, ranks: Optional[Sequence[Optional[int]]],
                 input_grad: bool, patches: bool = False) -> dict[str, int]:
    x, y = shapes.input, shapes.output
    if kind == "Conv2d":
        out_ch, cin_g, kh, kw = module.weight.shape
        macs = y[0] * out_ch * y[2] * y[3] * cin_g * kh * kw
    else:
        macs = prod(x[:-1]) * module.weight.shape[0] * x[-1]
    fwd = 2 * macs
    # the weight gradient alone (bwd without the input gradient): the paper counts forward plus this
    row = {"bp_fwd_flops": fwd, "bp_bwd_flops": fwd * (2 if input_grad else 1), "bp_wgrad_flops": fwd}
    if ranks is None:
        return row
    if patches:
        return {**row, **_patch_flops(module, shapes, ranks, fwd, input_grad)}
    # forward: the layer plus the projection of its input onto the factors
    proj, core = _projection_flops(x, ranks)
    bwd = fwd if input_grad else 0
    if kind == "Conv2d" and ConvGeometry.of(module).pointwise(module.weight.shape):
        bwd += _pointwise_wgrad_flops(module, shapes, ranks)
    elif kind == "Conv2d":
        r_b, r_c, r_h, r_w = ranks
        groups = module.groups
        nb = x[0] if r_b is None else r_b
        if r_b is not None:  # dy x_1 U_b^T
            bwd += 2 * r_b * prod(y)
        zshape = [nb, core[1], core[2], core[3]]
        full = [None, None, x[2] if r_h is not None else None, x[3] if r_w is not None else None]
        exp_order = [m for m in reversed(projection_order(x, [None, None, r_h, r_w]))]
        f, zshape = _chain_flops(zshape, full, exp_order)
        bwd += f
        if r_c is None:
            bwd += 2 * nb * out_ch * y[2] * y[3] * cin_g * kh * kw
        elif groups == 1:
            bwd += 2 * nb * out_ch * y[2] * y[3] * r_c * kh * kw + 2 * out_ch * kh * kw * r_c * x[1]
        else:
            bwd += 2 * prod(zshape) * x[1] + 2 * nb * out_ch * y[2] * y[3] * cin_g * kh * kw
    else:
        lead = list(ranks[:-1]) + [None]
        f, dshape = _chain_flops(y, lead, projection_order(y, lead))
        bwd += f + 2 * module.weight.shape[0] * prod(core)
        if ranks[-1] is not None:
            bwd += 2 * module.weight.shape[0] * ranks[-1] * x[-1]
    row.update(lance_fwd_flops=fwd + proj, lance_bwd_flops=bwd, lance_wgrad_flops=bwd - (fwd if input_grad else 0))
    return row


def paper_convention_tmacs(table, method: str = "bp") -> float:
    """The paper's count of a training iteration, in units of 10^12: forward MACs plus
    weight-gradient MACs of the trained layers (its BP figures: ResNet18's last 2 convolutions
    at 224 px and batch 128 give 0.059), from an :func:`activation_memory` table. ``method``
    "lance" counts LANCE's forward (with the projection) and its weight gradient from the core."""
    kind = "bp" if method == "bp" else "lance"
    return float((table[f"{kind}_fwd_flops"] + table[f"{kind}_wgrad_flops"]).sum()) / 2 / 1e12


def paper_hosvd_tmacs(table) -> float:
    """The paper's count for per-step HOSVD (its 1.93 to 22.86 T), in units of 10^12: for each
    trained layer, ``max(m, n)^2 * min(m, n)`` summed over the mode unfoldings (m x n) of its
    input, plus its forward MACs, from an :func:`activation_memory` table. It counts no rank:
    the same on every dataset, as the paper's tables are."""
    total = 0
    for shape, fwd in zip(table["input_shape"], table["bp_fwd_flops"]):
        size = prod(shape)
        total += sum(max(m, size // m) ** 2 * min(m, size // m) for m in shape) + fwd // 2
    return total / 1e12


def activation_memory(model: nn.Module, layers: Sequence[str], input_size: Sequence[int], batch_size: int,
                      calibration: Optional[Calibration] = None, *, bytes_per_element: int = 4):
    """Analytic activation memory and FLOPs of training ``layers`` (paper App. C).

    One row per layer: ``layer``, ``type``, ``input_shape``, ``bp_bytes`` (the input that
    plain backprop keeps for the weight gradient), ``bp_fwd_flops``, ``bp_bwd_flops`` (of which
    ``bp_wgrad_flops`` is the weight gradient); with a calibration also ``ranks``,
    ``core_shape``, ``lance_bytes`` (core plus factors), ``lance_fwd_flops``,
    ``lance_bwd_flops`` (of which ``lance_wgrad_flops``) and ``memory_ratio``. The backward counts the
    input gradient for every layer except the earliest one (nothing before it trains).
    """
    import pandas as pd

    names = list(layers)
    shapes = layer_shapes(model, names, input_size, batch_size)
    modules = resolve_layers(model, names)
    order = [n for n, _ in model.named_modules() if n in modules]
    first = order[0]
    rows = []
    for name in order:
        module = modules[name]
        kind = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
        s = shapes[name]
        row = {"layer": name, "type": kind, "input_shape": s.input, "bp_bytes": prod(s.input) * bytes_per_element}
        ranks, patches = None, False
        if calibration is not None:
            lc = calibration[name]
            if lc.batch_size is not None and lc.batch_size != batch_size:
                raise BatchSizeError(
                    f"the calibration projects the batch mode with a fixed factor for batch size {lc.batch_size}; "
                    f"ask for batch_size={lc.batch_size} or calibrate with compress_batch=False.")
            ranks, patches = lc.ranks, lc.patches
            row.update(ranks=tuple(ranks), core_shape=lc.core_shape(batch_size),
                       lance_bytes=lc.stored_numel(batch_size) * bytes_per_element)
            row["memory_ratio"] = row["bp_bytes"] / row["lance_bytes"]
        row.update(_layer_flops(kind, module, s, ranks, input_grad=name != first, patches=patches))
        rows.append(row)
    return pd.DataFrame(rows)


def saved_tensors(model: nn.Module, *inputs: Tensor, loss_fn=None):
    """Run ``model(*inputs)`` and list every tensor autograd saved for backward.

    One row per (module, storage): ``module`` (the innermost module whose forward saved it),
    ``module_type``, ``kind`` (``activation``, ``buffer`` such as LANCE's factors or
    BatchNorm statistics, or ``parameter``), ``shape``, ``bytes`` (of the storage it keeps
    alive). A storage saved twice by one module is listed once. The graph is freed on return.
    """
    import pandas as pd

    names = {id(m): n for n, m in model.named_modules()}
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    buffers = {b.untyped_storage().data_ptr() for b in model.buffers() if b is not None}
    stack: list[str] = []
    records: dict[tuple[str, int], dict] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        owner = stack[-1] if stack else ""
        kind = "parameter" if ptr in params else "buffer" if ptr in buffers else "activation"
        records.setdefault((owner, ptr), {"module": owner, "module_type": types.get(owner, ""), "kind": kind,
                                          "shape": tuple(t.shape), "bytes": storage.nbytes(), "storage": ptr})
        return t

    def enter(mod, args):
        stack.append(names[id(mod)])

    def leave(mod, args, out):
        stack.pop()

    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(enter))
        hooks.append(m.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(*inputs)
            if loss_fn is not None:
                out = loss_fn(out)
        del out
    finally:
        for h in hooks:
            h.remove()
    return pd.DataFrame(list(records.values()),
                        columns=["module", "module_type", "kind", "shape", "bytes", "storage"])


def measured_bytes(report, layers: Sequence[str]) -> dict[str, int]:
    """Bytes each named layer keeps for backward, from a :func:`saved_tensors` report: its
    activations and buffers (a LANCE layer's factors); parameters are never counted."""
    keep = report[report.kind != "parameter"]
    return {name: int(keep[keep.module == name].bytes.sum()) for name in layers}


#: the kinds of tensor a training step keeps, in the order :func:`step_breakdown` lists them
STEP_KINDS = ("trained layers' inputs or cores", "trained layers' factors", "BatchNorm", "ReLU / ReLU6",
              "head's input", "other")


def step_breakdown(report, layers: Sequence[str], head: Optional[str] = None) -> dict[str, int]:
    """Bytes a whole training step keeps, by kind of tensor (:data:`STEP_KINDS`), from a
    :func:`saved_tensors` report: the trained layers' saved inputs (BP) or cores (LANCE), their
    fixed factors, what BatchNorm and the ReLUs keep (activations and statistics), the head's
    input (``head``: its name) and everything else. Parameters are not counted; a storage kept
    by two modules counts once, for the first."""
    keep = report[report.kind != "parameter"].drop_duplicates("storage")
    out = dict.fromkeys(STEP_KINDS, 0)
    for _, row in keep.iterrows():
        if row.module in layers:
            kind = STEP_KINDS[0] if row.kind == "activation" else STEP_KINDS[1]
        elif "BatchNorm" in row.module_type:
            kind = STEP_KINDS[2]
        elif "ReLU" in row.module_type:
            kind = STEP_KINDS[3]
        elif head is not None and row.module == head:
            kind = STEP_KINDS[4]
        else:
            kind = STEP_KINDS[5]
        out[kind] += int(row.bytes)
    return out
