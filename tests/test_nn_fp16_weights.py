"""float16 weight storage (nn/fp16_weights.py): half the bytes, no change in what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto  # noqa: E402

from sam3d_addon.nn.fp16_weights import CAST_SUFFIX, round_module_fp16_, store_initializers_fp16  # noqa: E402


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.LayerNorm(96),
                               torch.nn.Linear(96, 32)).eval()


def _export(net, path):
    torch.onnx.export(net, (torch.zeros(2, 48),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "B"}, "y": {0: "B"}}, opset_version=17, dynamo=False)
    return path


def _run(path, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_round_module_rounds_large_tensors_only():
    net = _net()
    small_before = net[2].weight.detach().clone() + 1e-4  # 96 values: below MIN_ELEMENTS
    with torch.no_grad():
        net[2].weight.copy_(small_before)
    assert round_module_fp16_(net) == 2  # the two Linear weights (4608 and 3072 values)
    for layer in (net[0], net[3]):
        w = layer.weight.detach()
        assert torch.equal(w, w.half().float())
    assert torch.equal(net[2].weight.detach(), small_before)  # kept at float32 precision


def test_store_fp16_halves_the_file_and_changes_no_output(tmp_path):
    net = _net()
    round_module_fp16_(net)
    plain = _export(net, tmp_path / "plain.onnx")
    half = _export(net, tmp_path / "half.onnx")
    stats = store_initializers_fp16(half)
    assert stats["converted"] == 2 and stats["kept_float32"] == 0
    assert stats["bytes_after"] < 0.6 * stats["bytes_before"]
    model = onnx.load(str(half))
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert sum(name.endswith(CAST_SUFFIX) and kind == TensorProto.FLOAT16 for name, kind in stored.items()) == 2
    x = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    np.testing.assert_array_equal(_run(half, x), _run(plain, x))  # bit for bit: the casts are exact


def test_store_fp16_keeps_values_float16_cannot_hold(tmp_path):
    net = _net(1)  # not rounded: float32 weights with bits below float16's precision
    plain = _export(net, tmp_path / "plain.onnx")
    path = _export(net, tmp_path / "unrounded.onnx")
    stats = store_initializers_fp16(path)
    assert stats["converted"] == 0 and stats["kept_float32"] == 2
    x = np.random.default_rng(1).standard_normal((2, 48)).astype(np.float32)
    np.testing.assert_array_equal(_run(path, x), _run(plain, x))
