"""Image-to-image ONNX models as filters, by tiles (needs ``pip install 'tileproc[onnx]'``).

A model takes NCHW float32 in 0..1, RGB (C = 3) or gray (C = 1; each colour
channel of the frame then goes through it on its own), and returns the same
channels, at the same size or scaled (x2, x4: read from the model's shapes,
or from one probe run when they are dynamic). Each process keeps one
onnxruntime session per model, with one intra-op thread (the engine's workers
are the parallelism).

How the frame is cut for the model:

* A model with dynamic height and width runs on each tile's window: the
  output core grown by ``halo`` input pixels. With a halo at least the
  model's receptive field, tiles equal the whole-image run within float
  rounding (one step of uint8 at most).
* A model with a fixed input size (say 64x64), or ``blend=feather``, runs on
  *blocks* laid on a grid fixed to the frame, overlapping by ``2*halo``;
  blocks that reach past the frame edge are padded with zeros (as a
  convolution pads). With ``blend=none`` each output pixel comes from the block
  whose centre part holds it; with ``blend=feather`` overlapping blocks are
  cross-faded with linear ramps over the overlap. Blocks are run in batches
  when the model's batch dimension is free. Because the grid is fixed to the
  frame, tiles equal the whole-frame run of the same blocks; feathering with a
  halo smaller than the receptive field hides seams but is an approximation of
  the whole-image run, not equal to it.

``halo`` defaults to the receptive field derived from the graph when it is a
stack of convolutions, pooling, pixel shuffles and pointwise operations (read
with the ``onnx`` package); otherwise to :data:`DEFAULT_HALO`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from filters import _pixels as px
from filters.base import Filter, FilterError, Rect4, Stage, _Scaled, scaled_size

__all__ = ["Onnx", "ModelInfo", "model_info", "receptive_field", "global_ops", "DEFAULT_HALO", "FEATHER_BLOCK"]

#: Halo when the graph's reach cannot be derived (input pixels).
DEFAULT_HALO = 16
#: Block size for ``blend=feather`` with a model of dynamic size, unless ``block`` is given.
FEATHER_BLOCK = 256
_BLENDS = ("none", "feather")
_BATCH = 16  # blocks per run when the batch dimension is free

_POINTWISE = frozenset(
    "Relu LeakyRelu PRelu Sigmoid Tanh Clip Add Sub Mul Div Identity Concat BatchNormalization Sum Max Min "
    "Elu Selu HardSigmoid Softplus Softsign Neg Abs Sqrt Pow Exp Log Cast Dropout Mish Gelu HardSwish Erf "
    "Round Floor Ceil Sign Reciprocal ThresholdedRelu Where Celu".split()
)
_WINDOWED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
# Operations that read the whole image: no halo makes tiles equal the whole-image run.
_GLOBAL = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise FilterError("onnx: needs onnxruntime; install it with: pip install 'tileproc[onnx]'") from None
    return onnxruntime


_SESSIONS: dict[tuple, Any] = {}


def _session(path: str) -> Any:
    """This process's session for ``path`` (one intra-op thread), made once per file version."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    session = _SESSIONS.get(key)
    if session is None:
        ort = _runtime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FilterError(f"onnx: cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        if len(_SESSIONS) >= 4:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = session
    return session


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the filter needs to know about a model: its input, its scale and its reach."""

    input_name: str
    output_name: str
    channels: int  # 1 or 3
    size: tuple[int, int] | None  # a fixed (height, width) input, or None
    batch: int | None  # a fixed batch size, or None when free
    scale: Fraction
    reach: int | None  # receptive field radius in input pixels, when the graph tells


def model_info(path: str) -> ModelInfo:
    """Inspect a model file: its NCHW input, scale (from its shapes or a probe run) and reach.

    Raises :class:`~filters.FilterError` naming the file and what does not fit.
    """
    session = _session(path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise FilterError(f"onnx: {path}: expected one NCHW image input, got {[(i.name, i.shape) for i in inputs]}")
    n, c, h, w = inputs[0].shape
    if c not in (1, 3):
        raise FilterError(f"onnx: {path}: the input must have 1 (gray) or 3 (RGB) channels, got {c!r}")
    static = isinstance(h, int) and isinstance(w, int)
    if not static and (isinstance(h, int) or isinstance(w, int)):
        raise FilterError(f"onnx: {path}: height and width must be both fixed or both free, got {h!r}x{w!r}")
    batch = n if isinstance(n, int) else None
    probe = (h, w) if static else (48, 48)
    x = np.zeros((batch or 1, c, *probe), np.float32)
    try:
        (y,) = session.run([outputs[0].name], {inputs[0].name: x})[:1]
    except Exception as exc:
        raise FilterError(f"onnx: {path}: a probe run failed: {str(exc).strip().splitlines()[0]}") from None
    if y.ndim != 4 or y.shape[1] != c:
        raise FilterError(f"onnx: {path}: the output must be NCHW with {c} channels like its input, got {y.shape}")
    scale = Fraction(y.shape[2], probe[0])
    if Fraction(y.shape[3], probe[1]) != scale:
        raise FilterError(f"onnx: {path}: different scales for height and width ({y.shape[2:]} from {probe})")
    return ModelInfo(
        inputs[0].name, outputs[0].name, c, (h, w) if static else None, batch, scale, receptive_field(path)
    )


def global_ops(path: str) -> list[str]:
    """The operations of the model's graph that read the whole image (GlobalAveragePool...),
    in graph order; empty when there are none or the ``onnx`` package is missing."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return []
    return [node.op_type for node in model.graph.node if node.op_type in _GLOBAL]


def receptive_field(path: str) -> int | None:
    """How many input pixels beyond an output pixel the model reads, or None when the
    graph is not a stack of convolutions, pooling, pixel shuffles and pointwise operations
    (or the ``onnx`` package is missing)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return None
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    graph = model.graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    start = [i.name for i in graph.input if i.name not in dims]
    if len(start) != 1:
        return None
    known: dict[str, tuple[Fraction, Fraction]] = {start[0]: (Fraction(0), Fraction(1))}  # (reach, pixel size)
    for node in graph.node:
        found = [known[name] for name in node.input if name in known]
        if not found:
            continue  # constants
        if len({size for _, size in found}) != 1:
            return None
        reach, size = max(r for r, _ in found), found[0][1]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op in _WINDOWED:
            kernel = attrs.get("kernel_shape") or (
                dims.get(node.input[1], [0, 0, 1, 1])[2:] if len(node.input) > 1 else None
            )
            if not kernel:
                return None
            dilation = attrs.get("dilations", [1] * len(kernel))
            stride = attrs.get("strides", [1] * len(kernel))
            extent = max((k - 1) * d for k, d in zip(kernel, dilation))
            reach += Fraction(extent, 2) * size
            size = size / max(stride) if op == "ConvTranspose" else size * max(stride)
        elif op == "DepthToSpace":
            size = size / attrs["blocksize"]
        elif op == "SpaceToDepth":
            reach += (attrs["blocksize"] - 1) * size
            size = size * attrs["blocksize"]
        elif op not in _POINTWISE:
            return None
        for name in node.output:
            known[name] = (reach, size)
    out = graph.output[0].name
    return math.ceil(known[out][0]) if out in known else None


@dataclasses.dataclass(frozen=True)
class Onnx(Filter, _Scaled):
    """An image-to-image ONNX model (NCHW float in 0..1, RGB or gray), run by tiles.

    Parameters
    ----------
    model : str
        Path of the ``.onnx`` file.
    halo : int
        Input pixels of overlap around each tile or block; -1 (default) derives
        it from the graph for convolution stacks, else uses 16. With a halo
        at least the receptive field, tiles equal the whole-image run within
        float rounding.
    blend : str
        ``none`` (cut at tile borders) or ``feather`` (cross-fade overlapping
        blocks; approximate, see the module notes).
    block : int
        Block size in input pixels for ``blend=feather`` with a model of
        dynamic size (0: 256). Models of fixed size use their own.

    Notes
    -----
    Integer frames are divided by their peak (255, 65535); the output is
    clipped to 0..1, scaled back and rounded. Alpha passes through (taken from
    the nearest input pixel when the model scales). A gray model runs on each
    colour channel; an RGB model needs three colour channels.
    """

    name = "onnx"

    model: str = ""
    halo: int = -1
    blend: str = "none"
    block: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise FilterError("onnx: give the model file: onnx:model=path/to/model.onnx")
        path = os.path.abspath(os.path.expanduser(str(self.model)))
        if not os.path.isfile(path):
            raise FilterError(f"onnx: model file not found: {self.model}")
        if self.blend not in _BLENDS:
            raise FilterError(f"onnx: blend must be one of {', '.join(_BLENDS)}, got {self.blend!r}")
        px.check_int(self.name, "halo", self.halo, low=-1, high=4096)
        px.check_int(self.name, "block", self.block, low=0, high=1 << 16)
        info = model_info(path)
        if self.halo < 0 and (whole := global_ops(path)):
            raise FilterError(
                f"onnx: {self.model} has {whole[0]}, which reads the whole image: by tiles no halo equals the "
                "whole-image run; give halo=N to run it by tiles anyway (the result is approximate)"
            )
        halo = self.halo if self.halo >= 0 else (info.reach if info.reach is not None else DEFAULT_HALO)
        object.__setattr__(self, "model", path)
        object.__setattr__(self, "halo", int(halo))
        object.__setattr__(self, "info", info)
        object.__setattr__(self, "scale", None if info.scale == 1 else info.scale)
        blocks = info.size is not None or self.blend == "feather"
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "reshapes", self.scale is not None or blocks)
        if blocks:
            size = info.size or (self.block or FEATHER_BLOCK,) * 2
            stride = min(size) - 2 * halo
            if stride < 1:
                raise FilterError(
                    f"onnx: halo {halo} leaves nothing of a {size[0]}x{size[1]} block; "
                    f"use halo <= {(min(size) - 1) // 2}"
                )
            if (stride * info.scale).denominator != 1 or (halo * info.scale).denominator != 1:
                raise FilterError(f"onnx: blocks of {size} with halo {halo} do not fall on whole output pixels")

    # -- geometry --------------------------------------------------------------

    def _grid(self, n: int, axis: int) -> tuple[int, int]:
        """(block size, stride) along ``axis`` for an input of ``n`` pixels."""
        info = self.info  # type: ignore[attr-defined]
        size = info.size[axis] if info.size is not None else min(self.block or FEATHER_BLOCK, n + 2 * self.halo)
        return size, size - 2 * self.halo

    def _blocks(self, o0: int, o1: int, n: int, axis: int) -> list[int]:
        """Indices of the blocks along ``axis`` whose output counts for outputs ``o0:o1``."""
        size, stride = self._grid(n, axis)
        s, h = self.info.scale, self.halo  # type: ignore[attr-defined]
        count = -(-n // stride)
        if self.blend == "none":
            return list(range(int(o0 // (stride * s)), min(count, int((o1 - 1) // (stride * s)) + 1)))
        return [k for k in range(count) if (k * stride - h + size) * s > o0 and (k * stride - h) * s < o1]

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.scale is None:
            return (int(shape[0]), int(shape[1]))
        return (scaled_size(shape[0], self.scale), scaled_size(shape[1], self.scale))

    def source_rect(self, rect: Rect4, shape: tuple[int, int]) -> Rect4:
        if not self.blocks:  # type: ignore[attr-defined]
            return super().source_rect(rect, shape)
        spans = []
        for axis, (o0, o1) in enumerate(((rect[0], rect[1]), (rect[2], rect[3]))):
            n = shape[axis]
            size, stride = self._grid(n, axis)
            ks = self._blocks(o0, o1, n, axis)
            spans += [max(0, ks[0] * stride - self.halo), min(n, ks[-1] * stride - self.halo + size)]
        return tuple(spans)  # type: ignore[return-value]

    # -- pixels ----------------------------------------------------------------

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        if self.blocks:  # type: ignore[attr-defined]
            out = self.output_shape(tile.shape[:2])
            whole = (0, tile.shape[0], 0, tile.shape[1])
            return self.apply_rect(tile, Stage(tile.shape[:2], whole, (0, out[0], 0, out[1])))
        colour, alpha = self._split(tile)
        result = self._predict(colour[None])[0]
        return self._join(result, alpha, tile, 0, 0)

    def apply_rect(self, x: np.ndarray, stage: Stage) -> np.ndarray:
        if not self.blocks:  # type: ignore[attr-defined]
            return super().apply_rect(x, stage)
        px.check_tile(self.name, x)
        s, h = self.info.scale, self.halo  # type: ignore[attr-defined]
        (r0, r1, c0, c1), (wr, _, wc, _) = stage.rect, stage.window
        colour, alpha = self._split(x)
        rows = [(k, *self._grid(stage.shape[0], 0)) for k in self._blocks(r0, r1, stage.shape[0], 0)]
        cols = [(k, *self._grid(stage.shape[1], 1)) for k in self._blocks(c0, c1, stage.shape[1], 1)]
        blocks = [(kr, kc) for kr in rows for kc in cols]
        inputs = np.stack([self._block_input(colour, kr, kc, wr, wc) for kr, kc in blocks])
        preds = self._predict(inputs)
        acc = np.zeros((r1 - r0, c1 - c0, colour.shape[2]), np.float32)
        weights = np.zeros((r1 - r0, c1 - c0, 1), np.float32)
        for ((kr, _, stride_r), (kc, _, stride_c)), pred in zip(blocks, preds):
            top, left = int((kr * stride_r - h) * s), int((kc * stride_c - h) * s)
            if self.blend == "none":  # the block's centre part only
                a0, a1 = int(kr * stride_r * s), int((kr + 1) * stride_r * s)
                b0, b1 = int(kc * stride_c * s), int((kc + 1) * stride_c * s)
            else:
                a0, a1, b0, b1 = top, top + pred.shape[0], left, left + pred.shape[1]
            a0, a1, b0, b1 = max(a0, r0), min(a1, r1), max(b0, c0), min(b1, c1)
            if a0 >= a1 or b0 >= b1:
                continue
            part = pred[a0 - top : a1 - top, b0 - left : b1 - left]
            if self.blend == "none":
                acc[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = part
                weights[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = 1.0
                continue
            ramp = 2 * h * s
            wr_ = _ramp(np.arange(a0, a1) - top, pred.shape[0], ramp)
            wc_ = _ramp(np.arange(b0, b1) - left, pred.shape[1], ramp)
            w = (wr_[:, None] * wc_[None, :])[..., None]
            acc[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += part * w
            weights[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += w
        return self._join(acc / weights, alpha, x, r0 - int(wr * s), c0 - int(wc * s), (r1 - r0, c1 - c0))

    def _split(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(colour as float32 0..1 in (H, W, C), alpha or None)."""
        x = tile if tile.ndim == 3 else tile[..., None]
        ncolour = x.shape[2] - 1 if x.shape[2] in (2, 4) else x.shape[2]
        if self.info.channels == 3 and ncolour != 3:  # type: ignore[attr-defined]
            raise FilterError(f"onnx: the model takes RGB (3 channels); this frame has {ncolour} colour channel(s)")
        colour = x[..., :ncolour].astype(np.float32) / np.float32(px.peak(tile.dtype))
        return colour, (x[..., ncolour:] if ncolour < x.shape[2] else None)

    def _block_input(self, colour: np.ndarray, kr: tuple, kc: tuple, wr: int, wc: int) -> np.ndarray:
        """One block's input (size, size, C): the frame's pixels, zeros beyond its edge."""
        (k_r, size_r, stride_r), (k_c, size_c, stride_c) = kr, kc
        top, left = k_r * stride_r - self.halo - wr, k_c * stride_c - self.halo - wc
        block = np.zeros((size_r, size_c, colour.shape[2]), np.float32)
        r0, r1 = max(top, 0), min(top + size_r, colour.shape[0])
        c0, c1 = max(left, 0), min(left + size_c, colour.shape[1])
        block[r0 - top : r1 - top, c0 - left : c1 - left] = colour[r0:r1, c0:c1]
        return block

    def _predict(self, images: np.ndarray) -> np.ndarray:
        """Run the model on (B, H, W, C) images; returns (B, H*s, W*s, C) float32."""
        info = self.info  # type: ignore[attr-defined]
        session = _session(self.model)
        b, h, w, c = images.shape
        if info.channels == 1:  # a gray model: every colour channel on its own
            nchw = images.transpose(0, 3, 1, 2).reshape(b * c, 1, h, w)
        else:
            nchw = images.transpose(0, 3, 1, 2)
        outs = [session.run([info.output_name], {info.input_name: batch})[0] for batch in _batches(nchw, info.batch)]
        y = np.concatenate(outs)[: len(nchw)]
        y = y.reshape(b, c, y.shape[2], y.shape[3]) if info.channels == 1 else y
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1), dtype=np.float32)

    def _join(
        self,
        colour: np.ndarray,
        alpha: np.ndarray | None,
        tile: np.ndarray,
        row: int,
        col: int,
        shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Colour back to the tile's dtype, and alpha (nearest) for output pixels starting at (row, col)."""
        out_dtype = tile.dtype
        colour = px.to_dtype(np.clip(colour, 0.0, 1.0) * np.float32(px.peak(out_dtype)), out_dtype)
        if tile.ndim == 2:
            return colour[..., 0]
        if alpha is None:
            return colour
        rows, cols = shape or colour.shape[:2]
        s = self.info.scale  # type: ignore[attr-defined]
        ri = np.array([math.floor((row + i + Fraction(1, 2)) / s) for i in range(rows)])
        ci = np.array([math.floor((col + j + Fraction(1, 2)) / s) for j in range(cols)])
        return np.concatenate([colour, alpha[ri][:, ci]], axis=2)


def _batches(nchw: np.ndarray, fixed: int | None) -> Iterator[np.ndarray]:
    if fixed is None:
        for i in range(0, len(nchw), _BATCH):
            yield np.ascontiguousarray(nchw[i : i + _BATCH])
        return
    for i in range(0, len(nchw), fixed):
        part = nchw[i : i + fixed]
        if len(part) < fixed:
            part = np.concatenate([part, np.zeros((fixed - len(part), *part.shape[1:]), part.dtype)])
        yield np.ascontiguousarray(part)


def _ramp(pos: np.ndarray, length: int, width: Fraction) -> np.ndarray:
    """Feather weight of positions ``pos`` in a block of ``length``: ramps of ``width`` at both ends."""
    if width <= 0:
        return np.ones(len(pos), np.float32)
    near = np.minimum(pos + 0.5, length - pos - 0.5) / float(width)
    return np.clip(near, 1e-3, 1.0).astype(np.float32)
