"""Phase I: one-shot subspace calibration (paper Sec. 2.2, Eqs. 2-3).

``calibrate`` passes calibration batches through the model once (eval mode, no gradients),
accumulates for every named layer and every mode of its input the mode covariance
``mean_i X_(m),i X_(m),i^T`` (Eq. 2), decomposes each once and keeps the smallest rank whose
energy reaches the threshold (Eq. 3). The result, a :class:`Calibration`, holds per layer
the full eigenbases and spectra, so it can be re-truncated at another energy without new
data (:meth:`Calibration.truncate`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lance.errors import (
    BatchSizeError,
    CalibrationMismatchError,
    InputShapeError,
    LanceError,
    NonFiniteActivationError,
    UnsupportedLayerError,
)
from lance.core.hosvd import basis_from_gram, captured_energy, check_energy, energy_rank, mode_gram
from lance.core.selection import layer_spec, resolve_layers

__all__ = ["calibrate", "Calibration", "LayerCalibration", "ModeBasis", "mode_names", "layer_inputs", "model_fingerprint",
           "SPACES", "conv_patches"]

FORMAT_VERSION = 1

# How a convolution's input is seen: "feature", the (B, C, H, W) tensor itself (the paper's
# reading), or "patch", the unfolded patches its weight multiplies, (B, C*k*k, L) with L output
# positions (the space GPM and the authors' continual-learning code keep their memory in). A
# linear layer's input is the same in both.
SPACES = ("feature", "patch")


def check_space(space) -> str:
    if space not in SPACES:
        raise LanceError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}.")
    return space


def check_patchable(conv: nn.Conv2d) -> None:
    """Refuse a convolution whose input has no patch space here."""
    if conv.groups != 1:
        raise UnsupportedLayerError("a grouped convolution multiplies each patch by only its group's weights; "
                                    "the patch space needs groups == 1.")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise UnsupportedLayerError("the patch space supports convolutions with numeric zero padding only.")


def conv_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """The input of ``conv`` as the patches its weight multiplies: ``(B, C*k*k, L)``, the rows in
    the order of ``weight.reshape(out, -1)``, one column per output position (``F.unfold``)."""
    check_patchable(conv)
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)


def mode_names(kind: str, ndim: int, space: str = "feature") -> tuple[str, ...]:
    """Names of the modes of a layer input."""
    if kind == "Conv2d":
        return ("batch", "patch", "position") if space == "patch" else ("batch", "channel", "height", "width")
    return ("batch", "feature") if ndim == 2 else ("batch", "token", "feature")


@dataclass
class ModeBasis:
    """One mode of one layer's input: its eigenbasis, spectrum and kept rank."""

    name: str
    size: int
    rank: Optional[int]  # None: this mode is not compressed
    basis: Optional[Tensor] = None  # (size, size) eigenvectors, float64, largest first
    eigenvalues: Optional[Tensor] = None  # (size,), float64, descending
    limit: Optional[int] = None  # at most this many leading columns may be kept (Phase III's null space)

    @property
    def compressed(self) -> bool:
        return self.rank is not None

    @property
    def factor(self) -> Optional[Tensor]:
        """The ``(size, rank)`` factor with orthonormal columns, or ``None``."""
        if self.rank is None:
            return None
        return self.basis[:, : self.rank].contiguous()

    @property
    def energy(self) -> float:
        """Share of this mode's energy captured by the kept rank (1.0 if not compressed)."""
        return 1.0 if self.rank is None else captured_energy(self.eigenvalues, self.rank)


@dataclass
class LayerCalibration:
    """Calibration of one layer: its spec (to recognise the layer) and one basis per mode.

    ``space`` says how a convolution's input was seen (:data:`SPACES`): in the patch space
    ``input_shape`` is that of the unfolded patches, ``(B, C*k*k, L)``."""

    name: str
    spec: dict
    input_shape: tuple[int, ...]
    modes: list[ModeBasis] = field(default_factory=list)
    space: str = "feature"
    tensor_shape: Optional[tuple[int, ...]] = None  # in the patch space: the (B, C, H, W) input itself

    @property
    def patches(self) -> bool:
        return self.space == "patch" and self.spec.get("type") == "Conv2d"

    @property
    def factors(self) -> list[Optional[Tensor]]:
        return [m.factor for m in self.modes]

    @property
    def ranks(self) -> list[Optional[int]]:
        return [m.rank for m in self.modes]

    @property
    def batch_size(self) -> Optional[int]:
        """The fixed batch size, if the batch mode is projected; else ``None``."""
        return self.input_shape[0] if self.modes[0].compressed else None

    def core_shape(self, batch_size: Optional[int] = None) -> tuple[int, ...]:
        b = batch_size if batch_size is not None else self.input_shape[0]
        return tuple((b if i == 0 else m.size) if m.rank is None else m.rank
                     for i, m in enumerate(self.modes))

    def stored_numel(self, batch_size: Optional[int] = None) -> int:
        """Elements LANCE keeps for this layer's weight gradient: core plus factors (App. C)."""
        core = 1
        for s in self.core_shape(batch_size):
            core *= s
        return core + sum(m.size * m.rank for m in self.modes if m.rank is not None)

    def truncate(self, energy: float) -> "LayerCalibration":
        energy = check_energy(energy)
        modes = [ModeBasis(m.name, m.size,
                           None if m.rank is None else min(energy_rank(m.eigenvalues, energy), m.limit or m.size),
                           m.basis, m.eigenvalues, m.limit) for m in self.modes]
        return LayerCalibration(self.name, dict(self.spec), self.input_shape, modes, self.space,
                                self.tensor_shape)

    def only_modes(self, keep: Iterable[str]) -> "LayerCalibration":
        """The same calibration with only the modes named in ``keep`` (e.g. ``["channel"]``)
        projected; the others are left whole (rank ``None``), as if never compressed. It shows
        which mode's projection costs a gradient its direction."""
        keep = [keep] if isinstance(keep, str) else list(keep)
        names = [m.name for m in self.modes]
        unknown = [k for k in keep if k not in names]
        if unknown:
            raise LanceError(f"layer {self.name!r} has no mode {unknown[0]!r}; its modes are {names}.")
        modes = [m if m.name in keep else ModeBasis(m.name, m.size, None, m.basis, m.eigenvalues, m.limit)
                 for m in self.modes]
        return LayerCalibration(self.name, dict(self.spec), self.input_shape, modes, self.space,
                                self.tensor_shape)


class Calibration:
    """The result of Phase I for a set of layers. Index it by layer name.

    ``state_dict()`` / ``from_state_dict()`` and ``save()`` / ``load()`` round-trip it through
    ``torch.save``; printing it shows a table, one row per layer.
    """

    def __init__(self, layers: dict[str, LayerCalibration], energy: float, num_batches: int,
                 compress_batch: bool):
        self.layers = dict(layers)
        self.energy = float(energy)
        self.num_batches = int(num_batches)
        self.compress_batch = bool(compress_batch)

    # -- access ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerCalibration:
        try:
            return self.layers[name]
        except KeyError:
            raise LanceError(f"this calibration has no layer {name!r}; it has {list(self.layers)}.") from None

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def truncate(self, energy: float) -> "Calibration":
        """The same calibration with every rank re-chosen for another energy threshold."""
        energy = check_energy(energy)
        return Calibration({k: v.truncate(energy) for k, v in self.layers.items()}, energy,
                           self.num_batches, self.compress_batch)

    def only_modes(self, keep: Iterable[str]) -> "Calibration":
        """The same calibration with only the named modes projected in every layer
        (:meth:`LayerCalibration.only_modes`)."""
        return Calibration({k: v.only_modes(keep) for k, v in self.layers.items()}, self.energy,
                           self.num_batches, self.compress_batch)

    # -- display --------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """One row per layer: input shape, ranks, captured energy and sizes (for a table:
        ``pandas.DataFrame(calib.rows())``)."""
        rows = []
        for name, lc in self.layers.items():
            full = 1
            shape = lc.tensor_shape or lc.input_shape  # the elements BP keeps: the input, not its patches
            for s in shape:
                full *= s
            kept = lc.stored_numel()
            rows.append({
                "layer": name,
                "type": lc.spec["type"],
                "input_shape": "x".join(map(str, shape)),
                "ranks": "x".join("-" if r is None else str(r) for r in lc.ranks),
                "energy": " ".join("-" if m.rank is None else f"{m.energy:.3f}" for m in lc.modes),
                "input_elements": full,
                "stored_elements": kept,
                "compression": full / kept,
            })
        return rows

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        rows = self.rows()
        header = list(rows[0]) if rows else ["layer"]
        return header, [[f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()] for r in rows]

    def __repr__(self) -> str:
        head = (f"Calibration(energy={self.energy}, batches={self.num_batches}, "
                f"compress_batch={self.compress_batch}, layers={len(self)})")
        header, cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
        lines = [" ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += [" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
        return head + "\n" + "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        header, cells = self._cells()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "energy": self.energy,
            "num_batches": self.num_batches,
            "compress_batch": self.compress_batch,
            "layers": {
                name: {
                    "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in lc.spec.items()},
                    "input_shape": list(lc.input_shape),
                    "modes": [{"name": m.name, "size": m.size, "rank": m.rank, "basis": m.basis,
                               "eigenvalues": m.eigenvalues, "limit": m.limit} for m in lc.modes],
                    **({"space": lc.space, "tensor_shape": None if lc.tensor_shape is None else list(lc.tensor_shape)}
                       if lc.space != "feature" else {}),
                }
                for name, lc in self.layers.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Calibration":
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise LanceError("not a lance calibration state dict (or one of another format version); "
                             "recompute it with lance.calibrate.")
        layers = {}
        for name, d in state["layers"].items():
            spec = {k: tuple(v) if isinstance(v, list) else v for k, v in d["spec"].items()}
            modes = [ModeBasis(m["name"], m["size"], m["rank"], m["basis"], m["eigenvalues"], m.get("limit"))
                     for m in d["modes"]]
            for m in modes:
                if m.rank is not None and (not isinstance(m.rank, int) or not 1 <= m.rank <= m.size
                                           or not isinstance(m.basis, Tensor) or m.basis.shape[0] != m.size):
                    raise LanceError(f"layer {name!r}, mode {m.name!r}: rank {m.rank!r} or its basis does not fit "
                                     f"a mode of size {m.size}; recompute the calibration with lance.calibrate.")
            space = d.get("space", "feature")
            if space not in SPACES:
                raise LanceError(f"layer {name!r} was calibrated in an unknown space {space!r}; recompute the "
                                 "calibration with lance.calibrate.")
            tensor_shape = tuple(d["tensor_shape"]) if d.get("tensor_shape") is not None else None
            layers[name] = LayerCalibration(name, spec, tuple(d["input_shape"]), modes, space, tensor_shape)
        return cls(layers, state["energy"], state["num_batches"], state["compress_batch"])

    def save(self, path: str | os.PathLike, model: Optional[nn.Module] = None) -> None:
        """Write with ``torch.save``, atomically (a temporary file renamed into place), with a
        sha256 of the tensors; with ``model``, also the fingerprint of the weights it was made
        for, which :meth:`load` checks."""
        if model is not None and not isinstance(model, nn.Module):
            raise LanceError(f"model must be the torch.nn.Module the calibration was made for, got {type(model).__name__}.")
        state = self.state_dict()
        state["sha256"] = _digest(state)
        if model is not None:
            state["model"] = model_fingerprint(model)
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise LanceError(f"{path} is a folder; pass the file to write the calibration to.")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise LanceError(f"cannot write to {directory} ({err.strerror}); choose another folder.") from None
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, model: Optional[nn.Module] = None) -> "Calibration":
        """Read a file :meth:`save` wrote (tensors only: nothing in it is run), onto the CPU. It is
        refused when its tensors do not match their checksum, and, with ``model``, when it was
        made for other weights."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise LanceError(f"calibration file {path} not found.") from None
        except Exception as err:  # any damage or a pickle with code: the loader refuses, we say so
            raise LanceError(f"{path} is not a calibration file that loads safely ({type(err).__name__}); "
                             "recompute it with lance.calibrate and Calibration.save.") from None
        try:
            if isinstance(state, dict) and state.get("format") == FORMAT_VERSION and "sha256" not in state:
                raise LanceError(f"{path} carries no checksum of its tensors, so it cannot be verified; save it "
                                 "again with Calibration.save.")
            if isinstance(state, dict) and "sha256" in state and state["sha256"] != _digest(state):
                raise LanceError(f"the tensors in {path} do not match their checksum (the file is damaged or was "
                                 "edited); recompute it with lance.calibrate.")
            calib = cls.from_state_dict(state)
        except (KeyError, TypeError, IndexError) as err:
            raise LanceError(f"{path} is a damaged calibration file (missing {err}); recompute it with "
                             "lance.calibrate.") from None
        if model is not None and not isinstance(state.get("model"), dict):
            raise CalibrationMismatchError(f"{path} was saved without the model it was made for, so it cannot be "
                                           "checked against this one; save it with Calibration.save(path, model).")
        if model is not None and state["model"] != model_fingerprint(model):
            raise CalibrationMismatchError(f"{path} was calibrated on other weights ({state['model']['type']}, "
                                           f"sha256 {state['model']['sha256'][:12]}); recalibrate this model.")
        return calib


class _Accumulator:
    """Running sums of the mode covariances of one layer's input (Eq. 2)."""

    def __init__(self, name: str, module: nn.Module, compress_batch: bool, space: str = "feature"):
        self.name = name
        self.module = module
        self.spec = layer_spec(module)
        self.compress_batch = compress_batch
        self.space = space if isinstance(module, nn.Conv2d) else "feature"
        if self.space == "patch":
            check_patchable(module)
        self.shape: Optional[tuple[int, ...]] = None
        self.tensor_shape: Optional[tuple[int, ...]] = None
        self.grams: list[Optional[Tensor]] = []
        self.count = 0

    def add(self, x: Tensor, batch_index: int) -> None:
        kind = self.spec["type"]
        if kind == "Conv2d" and x.dim() != 4:
            raise UnsupportedLayerError(
                f"layer {self.name!r} got a {x.dim()}-D input; LANCE handles batched 4-D (B, C, H, W) conv inputs.")
        if kind == "Linear" and x.dim() not in (2, 3):
            raise UnsupportedLayerError(
                f"layer {self.name!r} got a {x.dim()}-D input; LANCE handles nn.Linear on 2-D (B, D) "
                "and 3-D (B, T, D) inputs.")
        if not torch.isfinite(x).all():
            raise NonFiniteActivationError(
                f"the input of layer {self.name!r} has NaN or infinite values in calibration batch "
                f"{batch_index}; check the model weights and the input normalisation, or drop that batch.")
        if self.space == "patch":
            self.tensor_shape = tuple(x.shape)
            x = conv_patches(self.module, x)
        shape = tuple(x.shape)
        if self.shape is None:
            self.shape = shape
            self.grams = [None] * x.dim()
        elif shape[1:] != self.shape[1:]:
            raise InputShapeError(
                f"layer {self.name!r} got input shape {shape} in calibration batch {batch_index} but "
                f"{self.shape} before; calibrate with one input resolution.")
        elif shape[0] != self.shape[0] and self.compress_batch:
            raise BatchSizeError(
                f"calibration batch {batch_index} has {shape[0]} samples, the first had {self.shape[0]}. "
                "The batch mode is projected with a fixed factor, so every calibration batch must have the "
                "training batch size: use drop_last=True in the DataLoader, or compress_batch=False.")
        if x.dtype in (torch.float16, torch.bfloat16):  # a half-precision Gram matrix overflows
            x = x.float()
        for m in range(x.dim()):
            if m == 0 and not self.compress_batch:
                continue
            g = mode_gram(x, m)
            self.grams[m] = g if self.grams[m] is None else self.grams[m] + g
        self.count += 1

    def finish(self, energy: float) -> LayerCalibration:
        names = mode_names(self.spec["type"], len(self.shape), self.space)
        modes = []
        for m, size in enumerate(self.shape):
            if self.grams[m] is None:
                modes.append(ModeBasis(names[m], size, None))
                continue
            vectors, values = basis_from_gram(self.grams[m] / self.count)
            modes.append(ModeBasis(names[m], size, energy_rank(values, energy), vectors, values))
        return LayerCalibration(self.name, self.spec, self.shape, modes, self.space, self.tensor_shape)


def _digest(state: dict[str, Any]) -> str:
    """sha256 of a calibration state's tensors, layer by layer and mode by mode."""
    h = hashlib.sha256()
    for name in sorted(state["layers"]):
        h.update(name.encode())
        if state["layers"][name].get("space", "feature") != "feature":  # files of the channel space keep their digest
            h.update(f"space:{state['layers'][name]['space']}".encode())
        for m in state["layers"][name]["modes"]:
            h.update(f"{m['name']}:{m['size']}:{m['rank']}".encode())
            for t in (m["basis"], m["eigenvalues"]):
                if t is not None:
                    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """The model's class and a sha256 of its parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return {"type": type(model).__name__, "sha256": h.hexdigest()}


def _check_batch(model: nn.Module, x: Any, index: int) -> None:
    if not isinstance(x, Tensor):
        raise LanceError(f"calibration batch {index} is a {type(x).__name__}; yield tensors or (input, target) "
                         "pairs (a DataLoader does).")
    if x.numel() == 0:
        raise LanceError(f"calibration batch {index} is empty (shape {tuple(x.shape)}).")
    param = next(model.parameters(), None)
    if param is not None and x.is_floating_point() and x.dtype != param.dtype:
        raise LanceError(f"calibration batch {index} is {x.dtype} but the model is {param.dtype}; convert the "
                         f"batches (x.to({param.dtype})) or the model (model.to(x.dtype)).")
    if not x.is_floating_point():
        raise LanceError(f"calibration batch {index} is {x.dtype}; the model takes floating-point inputs.")


def _inputs_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise LanceError("a calibration batch is an empty tuple; yield tensors or (input, target) pairs.")
        return batch[0]
    return batch


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    layers: Sequence[str],
    energy: float = 0.7,
    num_batches: int = 100,
    *,
    compress_batch: bool = True,
    progress: Optional[Callable[..., Iterable[Any]]] = None,
    space: str = "feature",
) -> Calibration:
    """Phase I of LANCE: one pass of up to ``num_batches`` batches through ``model``.

    ``batches`` yields input tensors or ``(input, target)`` pairs (a DataLoader works). The
    model runs in eval mode without gradients; its mode is restored afterwards. With
    ``compress_batch=True`` (the paper's choice) the batch mode is projected too, with a
    fixed factor: training batches must then have the calibration batch size. ``progress``
    wraps the batches for display, called as ``progress(batches, total=num_batches)`` (e.g.
    ``tqdm.auto.tqdm``). ``space="patch"`` calibrates every convolution on its unfolded patches
    (:func:`conv_patches`, three modes: batch, patch, position) instead of its input tensor;
    :func:`lance.compress` then swaps in the patch-space layer.
    """
    energy = check_energy(energy)
    check_space(space)
    if not isinstance(compress_batch, bool):
        raise LanceError(f"compress_batch must be True or False, got {compress_batch!r}.")
    if not hasattr(batches, "__iter__"):
        raise LanceError(f"batches must be an iterable of tensors (a DataLoader, a list), got {type(batches).__name__}.")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise LanceError(f"num_batches must be a positive integer, got {num_batches!r}.")
    modules = resolve_layers(model, layers)
    accumulators = {name: _Accumulator(name, mod, compress_batch, space) for name, mod in modules.items()}
    if progress is not None:  # e.g. tqdm.auto.tqdm
        batches = progress(batches, total=num_batches)
    seen = visit_layer_inputs(model, modules, batches, lambda name, _m, x, i: accumulators[name].add(x, i),
                              num_batches)
    if seen == 0:
        raise LanceError("the calibration batches were empty: pass an iterable (e.g. a DataLoader) that "
                         "yields at least one batch.")
    missing = [name for name, acc in accumulators.items() if acc.count == 0]
    if missing:
        raise LanceError(f"layers {missing} were never called during calibration: are they used in forward()?")
    return Calibration({name: acc.finish(energy) for name, acc in accumulators.items()},
                       energy, seen, compress_batch)


def visit_layer_inputs(model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[Any],
                       visit: Callable[[str, nn.Module, Tensor, int], None], num_batches: int) -> int:
    """Run up to ``num_batches`` batches (tensors or ``(input, target)`` pairs) through ``model`` in
    eval mode without gradients, calling ``visit(name, module, input, batch_index)`` with the input
    of every named module; the model's mode is restored. Returns the number of batches run."""
    state = {"batch": 0}
    handles = [mod.register_forward_pre_hook(lambda m, args, name=name: visit(name, m, args[0], state["batch"]))
               for name, mod in modules.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:  # stop right after the last batch: no extra batch is drawn
                x = _inputs_of(batch)
                _check_batch(model, x, state["batch"])
                try:
                    model(x)
                except LanceError:  # a layer's own check (NaN inputs, shapes): already says what to do
                    raise
                except (RuntimeError, ValueError, TypeError) as err:  # a shape or dtype the model cannot take
                    raise LanceError(f"the model cannot run calibration batch {state['batch']} of shape "
                                     f"{tuple(x.shape)} ({x.dtype}): {str(err).splitlines()[0][:160]}") from None
                state["batch"] += 1
                if state["batch"] >= num_batches:
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return state["batch"]


def layer_inputs(model: nn.Module, layers: Sequence[str], x: Tensor) -> dict[str, Tensor]:
    """The input tensors of the named layers for one batch ``x`` (eval mode, no gradients)."""
    found: dict[str, Tensor] = {}
    visit_layer_inputs(model, resolve_layers(model, layers), [x],
                       lambda name, _m, inp, _i: found.__setitem__(name, inp), 1)
    return found
