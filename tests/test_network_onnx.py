"""Network model and ONNX import/export, checked against onnxruntime and torch."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from vfnn.errors import ModelError
from vfnn.network import AvgPool2d, Conv2d, Dense, ElementwiseAffine, Network, ReLU
from vfnn.onnx_io import load_onnx, network_from_onnx, network_to_onnx, save_onnx


class Normalise(nn.Module):
    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def export(module: nn.Module, shape: tuple[int, ...], **kw) -> onnx.ModelProto:
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, *shape), buf, dynamo=False, input_names=["x"], **kw)
    return onnx.load_from_string(buf.getvalue())


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString())
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi[None].astype(np.float32)})[0].reshape(1, -1) for xi in x])


def roundtrip_check(model: onnx.ModelProto, shape: tuple[int, ...], seed: int = 0) -> Network:
    """import -> forward and import -> export -> onnxruntime both match the original to 1e-5."""
    x = np.random.default_rng(seed).uniform(0, 1, (16, *shape)).astype(np.float32)
    ref = run_ort(model, x)
    net = network_from_onnx(model)
    np.testing.assert_allclose(net.forward(x), ref, atol=1e-5, rtol=1e-5)
    clean = network_to_onnx(net)
    assert {n.op_type for n in clean.graph.node} <= {"Gemm", "Conv", "Relu", "Flatten", "AveragePool"}
    np.testing.assert_allclose(run_ort(clean, x), ref, atol=1e-5, rtol=1e-5)
    return net


def test_mlp_with_normalisation_folds_into_first_layer():
    torch.manual_seed(0)
    m = nn.Sequential(Normalise([0.1307], [0.3081]), nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    net = roundtrip_check(export(m, (1, 8, 8)), (1, 8, 8))
    assert not any(isinstance(la, ElementwiseAffine) for la in net.layers)


@pytest.mark.parametrize("keep_bn", [False, True])
def test_cnn_with_batchnorm_and_pooling(keep_bn: bool):
    torch.manual_seed(1)
    m = nn.Sequential(
        Normalise([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
        nn.Conv2d(3, 4, 3, stride=1, padding=0), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 5),
    )
    with torch.no_grad():
        m[2].running_mean.uniform_(-0.5, 0.5)
        m[2].running_var.uniform_(0.5, 2.0)
    kw = {"do_constant_folding": False, "training": torch.onnx.TrainingMode.PRESERVE} if keep_bn else {}
    model = export(m, (3, 10, 10), **kw)
    if keep_bn:
        assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    net = roundtrip_check(model, (3, 10, 10))
    # Normalisation in front of an unpadded conv and batch-norm after a conv are both folded.
    assert sum(isinstance(la, ElementwiseAffine) for la in net.layers) == 0


def test_normalisation_before_padded_conv_is_kept_exact():
    torch.manual_seed(2)
    m = nn.Sequential(Normalise([0.5], [0.2]), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    net = roundtrip_check(export(m, (1, 4, 4)), (1, 4, 4))
    assert isinstance(net.layers[0], ElementwiseAffine)  # folding would be wrong at the padded border


def test_torch_roundtrip_matches():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    net = Network.from_torch(m, (1, 8, 8))
    x = torch.rand(7, 1, 8, 8)
    np.testing.assert_allclose(net.forward(x.numpy()), m(x).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(net.to_torch()(x).detach().numpy(), m(x).detach().numpy(), atol=1e-6)
    assert net.relu_count == 3 * 4 * 4


def _graph(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_matmul_add_sub_div_transpose_reshape_graph():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Sub", ["x", "m"], ["a"]),
        helper.make_node("Div", ["a", "s"], ["b"]),
        helper.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 3, 1]),  # NCHW -> NHWC, as Keras nets do
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["h"]),
        helper.make_node("Add", ["h", "B"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    inits = {"m": rng.uniform(size=(1, 2, 3, 3)), "s": rng.uniform(0.5, 1, size=(1, 2, 1, 1)),
             "shape": np.array([1, -1]), "W": rng.normal(size=(18, 7)), "B": rng.normal(size=7),
             "W2": rng.normal(size=(3, 7)), "B2": rng.normal(size=3)}
    model = _graph(nodes, inits, [1, 2, 3, 3], [1, 3])
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    roundtrip_check(model, (2, 3, 3))


def test_acasxu_networks_match_onnxruntime(acasxu):
    paths = sorted((acasxu / "onnx").glob("*.onnx"))
    assert len(paths) == 45
    for path in paths:
        model = onnx.load(str(path))
        net = roundtrip_check(model, (1, 1, 5))
        assert net.relu_count == 300 and net.input_size == 5 and net.output_size == 5
        assert [type(la).__name__ for la in net.layers].count("Dense") == 7


def test_unsupported_operator_names_node_and_supported_set(tmp_path):
    model = _graph([helper.make_node("Sigmoid", ["x"], ["y"], name="act1")], {}, [1, 4], [1, 4])
    with pytest.raises(ModelError, match=r"act1.*Sigmoid.*unsupported operator.*Gemm"):
        network_from_onnx(model)


def test_branching_graph_is_rejected():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "x"], ["y"], name="skip")]
    with pytest.raises(ModelError, match="skip.*sequential"):
        network_from_onnx(_graph(nodes, {}, [1, 4], [1, 4]))


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not an onnx file at all")
    with pytest.raises(ModelError, match="bad.onnx: not a readable ONNX model"):
        load_onnx(bad)
    with pytest.raises(ModelError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")


def test_shape_mismatch_is_a_model_error():
    with pytest.raises(ModelError, match="expects 5 inputs"):
        Network((4,), (Dense(np.zeros((3, 5), np.float32), np.zeros(3, np.float32)),))


def test_export_of_hand_built_network(tmp_path):
    rng = np.random.default_rng(6)
    net = Network((1, 6, 6), (
        Conv2d(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), rng.normal(size=2).astype(np.float32),
               (1, 1), (1, 1, 1, 1)),
        ReLU(), AvgPool2d((2, 2), (2, 2)),
    ))
    path = save_onnx(net, tmp_path / "n.onnx")
    x = rng.uniform(size=(3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_ort(onnx.load(str(path)), x), net.forward(x), atol=1e-5)
    assert load_onnx(path).output_shape == (2, 3, 3)
