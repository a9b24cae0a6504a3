"""The onnx filter: tiny models built at test time with onnx.helper, run by tiles through
the engine and compared with onnxruntime on the whole image. No weights are downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'tileproc[onnx]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (it is in the test extra)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from filters import FilterError, resolve  # noqa: E402
from filters.onnx import DEFAULT_HALO, receptive_field  # noqa: E402
from filters.registry import available  # noqa: E402
from tiler.engine import Engine  # noqa: E402


def conv_model(path: Path, *, channels=3, k=5, size=None, batch=None, upscale=1, layers=1, op="Relu", seed=0) -> str:
    """A stack of ``layers`` k x k convolutions (weights positive, normalised), then a
    DepthToSpace for ``upscale`` > 1. ``size`` fixes the input's height and width."""
    rng = np.random.default_rng(seed)
    h, w = size or ("H", "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch or "N", channels, h, w])
    nodes, inits, cur = [], [], "x"
    for i in range(layers):
        cin = channels if i == 0 else 8
        cout = channels * upscale * upscale if i == layers - 1 else 8
        weight = rng.random((cout, cin, k, k)).astype(np.float32)
        weight /= weight.sum(axis=(1, 2, 3), keepdims=True)
        inits += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(np.full(cout, 0.01, np.float32), f"b{i}"),
        ]
        nodes.append(
            helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], pads=[k // 2] * 4)
        )
        cur = f"c{i}"
        if i < layers - 1:
            nodes.append(helper.make_node(op, [cur], [f"a{i}"]))
            cur = f"a{i}"
    if upscale > 1:
        nodes.append(helper.make_node("DepthToSpace", [cur], ["y"], blocksize=upscale, mode="DCR"))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def whole_run(path: str, img: np.ndarray) -> np.ndarray:
    """onnxruntime on the whole image, converted as the filter converts."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    peak = np.float32(255 if img.dtype == np.uint8 else 65535)
    x = (img.astype(np.float32) / peak).transpose(2, 0, 1)[None]
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0].transpose(1, 2, 0)
    return np.rint(np.clip(out, 0, 1) * peak).astype(img.dtype)


def engine_runs(spec: str, img: np.ndarray, tiles=((None), (37, 53), (64, 100_000))) -> list[np.ndarray]:
    outs = []
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as engine:
        for tile in tiles:
            engine.tile_shape = tile
            outs.append(engine.process(img, spec))
    return outs


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.abs(got.astype(int) - want).max() <= 1  # float rounding may move a value by one step


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)


def test_a_5x5_convolution_by_tiles_equals_the_whole_image_run(tmp_path, image):
    model = conv_model(tmp_path / "c5.onnx")
    f = resolve(f"onnx:model={model}").filters[0]
    assert f.halo == 2 and f.scale is None  # halo derived from the graph
    want = whole_run(model, image)
    for got in engine_runs(f"onnx:model={model}", image):
        assert_close(got, want)


def test_an_x2_upscaler_with_depth_to_space(tmp_path, image):
    model = conv_model(tmp_path / "x2.onnx", k=3, upscale=2, layers=2)
    f = resolve(f"onnx:model={model}").filters[0]
    assert f.halo == 2 and f.scale == 2 and f.output_shape((300, 500)) == (600, 1000)
    want = whole_run(model, image)
    for got in engine_runs(f"onnx:model={model}", image):
        assert_close(got, want)


def test_a_fixed_64x64_model_on_a_300x500_image(tmp_path, image):
    fixed = conv_model(tmp_path / "f64.onnx", size=(64, 64), batch=1)
    free = conv_model(tmp_path / "free.onnx")  # the same weights, any size
    f = resolve(f"onnx:model={fixed}").filters[0]
    assert f.info.size == (64, 64) and f.info.batch == 1
    want = whole_run(free, image)
    for got in engine_runs(f"onnx:model={fixed}", image):
        assert_close(got, want)


def test_gray_models_run_each_channel_and_alpha_passes(tmp_path):
    model = conv_model(tmp_path / "g.onnx", channels=1, k=3, upscale=2)
    rgba = np.random.default_rng(1).integers(0, 65536, (40, 60, 4), dtype=np.uint16)
    out = resolve(f"onnx:model={model}").apply(rgba)
    assert out.shape == (80, 120, 4) and out.dtype == np.uint16
    for c in range(3):
        assert_close(out[..., c], whole_run(model, rgba[..., c : c + 1])[..., 0])
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3].repeat(2, 0).repeat(2, 1))
    (got,) = engine_runs(f"onnx:model={model}", rgba, tiles=((7, 9),))
    assert_close(got, out)


def test_feather_blending_is_seamless_by_tiles_but_approximate(tmp_path, image):
    model = conv_model(tmp_path / "deep.onnx", k=3, layers=3)
    assert receptive_field(model) == 3
    spec = f"onnx:model={model},halo=1,blend=feather,block=48"
    whole = resolve(spec).apply(image)
    for got in engine_runs(spec, image):
        assert_close(got, whole)  # tiles equal the whole frame's blocks
    # Approximate: each block is padded at its own border, so pixels within the receptive
    # field of a block edge are off; the wider the overlap, the smaller the error.
    want = whole_run(model, image)
    errors = [
        np.abs(resolve(f"onnx:model={model},halo={h},blend=feather,block=48").apply(image).astype(int) - want).mean()
        for h in (0, 1, 3)
    ]
    assert errors[0] > errors[1] > errors[2] > 0


def test_unknown_graphs_get_the_documented_default_halo(tmp_path):
    model = conv_model(tmp_path / "soft.onnx", k=3, layers=2, op="Softmax")
    assert receptive_field(model) is None
    assert resolve(f"onnx:model={model}").filters[0].halo == DEFAULT_HALO
    assert resolve(f"onnx:model={model},halo=4").filters[0].halo == 4


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FilterError, match=r"^onnx: model file not found: .*nope\.onnx$"):
        resolve(f"onnx:model={tmp_path / 'nope.onnx'}")
    with pytest.raises(FilterError, match=r"^onnx: give the model file"):
        resolve("onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FilterError, match=r"^onnx: cannot load .*bad\.onnx"):
        resolve(f"onnx:model={bad}")
    model = conv_model(tmp_path / "c.onnx")
    with pytest.raises(FilterError, match=r"the model takes RGB"):
        resolve(f"onnx:model={model}").apply(np.zeros((8, 8), np.uint8))
    fixed = conv_model(tmp_path / "f.onnx", size=(16, 16), batch=1)
    with pytest.raises(FilterError, match=r"halo 9 leaves nothing of a 16x16 block; use halo <= 7"):
        resolve(f"onnx:model={fixed},halo=9")


def test_listed_as_an_optional_builtin():
    info = next(i for i in available() if i.name == "onnx")
    assert "tileproc[onnx]" in info.source and "model" in info.params


def test_a_model_that_reads_the_whole_image_is_refused_without_a_halo(tmp_path):
    """x - GlobalAveragePool(x) + 0.5: no tiling equals the whole run, so it is said, not guessed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["m"]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Add", ["d", "half"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    path = tmp_path / "gap.onnx"
    onnx.save(model, str(path))
    with pytest.raises(FilterError, match=r"has GlobalAveragePool, which reads the whole image.*give halo=N"):
        resolve(f"onnx:model={path}")
    assert resolve(f"onnx:model={path},halo=8").filters[0].halo == 8  # asked for: run by tiles, approximate
