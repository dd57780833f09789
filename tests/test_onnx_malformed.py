"""Malformed or unusual ONNX files: each is one line on stderr and exit code 2 naming what and where,
or, when it is valid ONNX that vfnn can represent, it loads and matches onnxruntime.

Every model here is built with onnx.helper; the cases are the ones found by a hostile tester (issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_runner import run_cli
from onnx import TensorProto, helper, numpy_helper

from vfnn.errors import ModelError
from vfnn.onnx_io import load_onnx, network_from_onnx
from vfnn.spec import robustness_spec
from vfnn.vnnlib import write_vnnlib

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)
B = RNG.normal(size=3).astype(np.float32)


def f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def model(nodes, inits, in_shape=(1, 4), out_shape=(1, 3), outputs=True, elem=TensorProto.FLOAT,
          opset=13) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", elem, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))] if outputs else [],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def gemm(inputs=("x", "W", "B"), **kw) -> onnx.NodeProto:
    return helper.make_node("Gemm", list(inputs), ["y"], name="fc", transB=1, **kw)


def bn(inputs, var, **kw) -> onnx.ModelProto:
    inits = {"g": f32(np.ones(4)), "b": f32(np.zeros(4)), "mu": f32(np.zeros(4)), "v": f32(var)}
    return model([helper.make_node("BatchNormalization", list(inputs), ["y"], name="bn", **kw)],
                 {k: v for k, v in inits.items() if k in inputs}, (1, 4), (1, 4))


def pool(in_hw: int, out_hw: int, **kw) -> onnx.ModelProto:
    return model([helper.make_node("AveragePool", ["x"], ["y"], name="pool", **kw)], {},
                 (1, 1, in_hw, in_hw), (1, 1, out_hw, out_hw))


def short_bias() -> onnx.ModelProto:
    m = model([gemm()], {"W": W, "B": B})
    m.graph.initializer[1].raw_data = m.graph.initializer[1].raw_data[:-4]  # 2 floats for dims (3,)
    return m


def symbolic_dims() -> onnx.ModelProto:
    return model([gemm()], {"W": W, "B": B}, in_shape=("N", "F"))


def with_domain() -> onnx.ModelProto:
    m = model([helper.make_node("Relu", ["x"], ["r"], name="act", domain="com.example"), gemm(("r", "W", "B"))],
              {"W": W, "B": B})
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


NAN_W, INF_W = W.copy(), W.copy()
NAN_W[0, 0], INF_W[1, 2] = np.nan, np.inf

# name -> (model, substrings of the one error line, besides the file name)
MALFORMED = {
    "initializer_bytes": (short_bias, ["tensor 'B' cannot be decoded"]),
    "constant_without_value": (lambda: model([helper.make_node("Constant", [], ["c"], name="k"),
                                              helper.make_node("Mul", ["x", "c"], ["m"]), gemm(("m", "W", "B"))],
                                             {"W": W, "B": B}), ["k", "Constant"]),
    "averagepool_without_kernel": (lambda: pool(4, 2), ["pool", "AveragePool", "kernel_shape"]),
    "batchnorm_too_few_inputs": (lambda: bn(["x", "g", "b"], np.ones(4)), ["bn", "BatchNormalization"]),
    "gemm_attribute_type": (lambda: model([gemm(alpha="big")], {"W": W, "B": B}), ["fc", "alpha"]),
    "gemm_int_attribute_as_float": (lambda: model([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc",
                                                                    transB=1.0)], {"W": W, "B": B}), ["fc", "transB"]),
    "no_outputs": (lambda: model([gemm()], {"W": W, "B": B}, outputs=False), ["0 outputs"]),
    "symbolic_input_dims": (symbolic_dims, ["'x'", "symbolic dimension 'F'", "axis 1"]),
    "missing_tensor": (lambda: model([gemm(("x", "W", "nob"))], {"W": W}), ["'nob'"]),
    "rank3_weight": (lambda: model([gemm(("x", "W3", "B"))], {"W3": W[None], "B": B}), ["fc", "rank"]),
    "nan_weight": (lambda: model([gemm()], {"W": NAN_W, "B": B}), ["fc", "'W'", "NaN"]),
    "inf_weight": (lambda: model([gemm()], {"W": INF_W, "B": B}), ["fc", "'W'", "infinite"]),
    "negative_bn_variance": (lambda: bn(["x", "g", "b", "mu", "v"], [1, -1, 1, 1]), ["bn", "'v'", "negative"]),
    "mixed_float32_float64": (lambda: model([gemm()], {"W": W.astype(np.float64), "B": B}), ["fc", "double"]),
    "averagepool_ceil_mode": (lambda: pool(5, 3, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
                              ["pool", "AveragePool", "ceil_mode"]),
    "integer_input": (lambda: model([gemm()], {"W": W, "B": B}, elem=TensorProto.INT64), ["'x'", "INT64"]),
    "gemm_bias_length": (lambda: model([gemm()], {"W": W, "B": f32(np.ones(5))}), ["fc", "bias", "(5,)"]),
    "custom_domain": (with_domain, ["act", "com.example"]),
    "float32_overflow": (lambda: model([helper.make_node("Div", ["x", "d"], ["q"], name="norm"), gemm(("q", "W", "B"))],
                                       {"d": f32(np.full(4, 1e-39)), "W": W, "B": B}), ["norm", "float32"]),
    "batchnorm_training_mode": (lambda: bn(["x", "g", "b", "mu", "v"], np.ones(4), training_mode=1, opset=15),
                                ["bn", "training"]),
}


@pytest.fixture(scope="module")
def spec_4_3(tmp_path_factory) -> Path:
    return write_vnnlib(robustness_spec(np.full(4, 0.5), 0, 0.1, 3), tmp_path_factory.mktemp("s") / "s.vnnlib")



@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_is_one_line_exit_2(case: str, spec_4_3: Path, tmp_path: Path, capsys) -> None:
    build, needles = MALFORMED[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(build(), str(path))
    for command in (["stats", str(path), str(spec_4_3), "--bounds", "ibp"],
                    ["verify", "--bounds", "none", "-t", "5", str(path), str(spec_4_3)]):
        code, out, err = run_cli(command, capsys)
        assert code == 2 and out == "", (command, code, out, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("vfnn: error: ") and str(path) in line, line
        for needle in needles:
            assert needle in line, (needle, line)
        assert "branches or merges" not in line


# The importer's own checks, without onnx.checker in front of it (which catches the invalid ones first).
UNCHECKED = {
    "initializer_bytes": ["tensor 'B' cannot be decoded"],
    "constant_without_value": ["'k' (Constant)", "exactly one value attribute"],
    "averagepool_without_kernel": ["'pool' (AveragePool)", "'kernel_shape' is missing"],
    "gemm_attribute_type": ["'fc' (Gemm)", "'alpha' must be of type FLOAT, got STRING"],
    "gemm_int_attribute_as_float": ["'fc' (Gemm)", "'transB' must be of type INT, got FLOAT"],
    "missing_tensor": ["'fc' (Gemm)", "input 'nob' is not an initializer"],
    "rank3_weight": ["'fc' (Gemm)", "must be a matrix"],
    "mixed_float32_float64": ["'fc' (Gemm)", "'W' is float64"],
    "batchnorm_too_few_inputs": ["'bn' (BatchNormalization)", "input 3 (mean) is missing"],
}


@pytest.mark.parametrize("case", sorted(UNCHECKED))
def test_importer_checks_access_without_onnx_checker(case: str) -> None:
    with pytest.raises(ModelError) as err:
        network_from_onnx(MALFORMED[case][0](), where="m.onnx", check=False)
    msg = str(err.value)
    assert msg.startswith("m.onnx: ") and "\n" not in msg
    for needle in UNCHECKED[case]:
        assert needle in msg, (needle, msg)


def ort_out(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(m.SerializeToString())
    return np.concatenate([sess.run(None, {"x": xi[None].astype(np.float32)})[0].reshape(1, -1) for xi in x])


def assert_matches_ort(m: onnx.ModelProto, shape: tuple[int, ...], tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    net = load_onnx(path)
    x = np.random.default_rng(1).uniform(-1, 1, (8, *shape)).astype(np.float32)
    np.testing.assert_allclose(net.forward(x), ort_out(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attr, value", [("value_float", 2.5), ("value_floats", [1.0, -2.0, 0.5, 3.0]),
                                         ("value", numpy_helper.from_array(f32([0.5, 1, 2, 4])))])
def test_constant_node_value_forms_are_read(attr: str, value, tmp_path: Path) -> None:
    nodes = [helper.make_node("Constant", [], ["c"], name="k", **{attr: value}),
             helper.make_node("Mul", ["x", "c"], ["m"]), gemm(("m", "W", "B"))]
    assert_matches_ort(model(nodes, {"W": W, "B": B}), (4,), tmp_path)


@pytest.mark.parametrize("attr, value", [("value_ints", [1, -1]), ("value_int", None)])
def test_integer_constants_feed_shape_operators(attr: str, value, tmp_path: Path) -> None:
    if attr == "value_ints":  # Reshape to [1, -1]
        nodes = [helper.make_node("Constant", [], ["s"], value_ints=value),
                 helper.make_node("Reshape", ["x", "s"], ["f"]), gemm(("f", "W", "B"))]
        assert_matches_ort(model(nodes, {"W": W, "B": B}, (1, 1, 4)), (1, 4), tmp_path)
    else:  # a scalar int: vfnn reads it, even where ONNX wants a 1-D axes tensor
        nodes = [helper.make_node("Constant", [], ["a"], value_int=1),
                 helper.make_node("Squeeze", ["x", "a"], ["f"]), gemm(("f", "W", "B"))]
        net = network_from_onnx(model(nodes, {"W": W, "B": B}, (1, 1, 4)), check=False)
        assert net.input_shape == (1, 4) and net.output_size == 3


def test_averagepool_ceil_mode_without_partial_windows_is_exact(tmp_path: Path) -> None:
    # 4x4, kernel 2, stride 2: ceil and floor mode give the same 2x2 windows.
    assert_matches_ort(pool(4, 2, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), (1, 4, 4), tmp_path)
    # 5x5 gives 9 outputs in ceil mode (onnxruntime), 4 in floor mode: refused rather than misread.
    m = pool(5, 3, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    assert ort_out(m, np.zeros((1, 1, 5, 5), np.float32)).size == 9
    with pytest.raises(ModelError, match="ceil_mode"):
        network_from_onnx(m)


def test_symbolic_batch_axis_is_accepted(tmp_path: Path) -> None:
    assert_matches_ort(model([gemm()], {"W": W, "B": B}, in_shape=("N", 4)), (4,), tmp_path)


def test_folding_that_overflows_float32_is_refused() -> None:
    # x / 1e-39 is finite in float64 but 1e39 does not fit float32: the verified net would differ.
    with pytest.raises(ModelError, match="norm.*not finite in float32"):
        network_from_onnx(MALFORMED["float32_overflow"][0]())
