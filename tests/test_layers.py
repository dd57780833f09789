"""The layer-kind contract: every registered kind implements every form, and the forms agree.

A new kind added to ``vfnn.layers.KINDS`` without an entry in SAMPLES fails
``test_every_kind_has_a_sample``; with one, every check below runs on it."""

from __future__ import annotations

import dataclasses
import inspect
import io
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from vfnn.errors import ModelError
from vfnn.layers import KINDS, ONNX_OPS, ActivationLayer, AffineLayer, BatchNorm, Layer, ParamRamp, layer_from_state
from vfnn.network import AvgPool2d, Conv2d, Dense, ElementwiseAffine, Flatten, Network, ReLU
from vfnn.onnx_io import network_from_onnx, network_to_onnx
from vfnn.verifiers.marabou import marabou_network

rng = np.random.default_rng(0)


def _f(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(np.float32)


# (layer, input shape) per kind; several for kinds with distinct cases.
SAMPLES: dict[type[Layer], list[tuple[Layer, tuple[int, ...]]]] = {
    Dense: [(Dense(_f(4, 6), _f(4)), (6,))],
    Conv2d: [(Conv2d(_f(3, 2, 3, 3), _f(3), (2, 1), (1, 1, 1, 1)), (2, 6, 5)),
             (Conv2d(_f(2, 1, 2, 2), _f(2)), (1, 4, 4))],
    ElementwiseAffine: [(ElementwiseAffine(_f(2, 3, 3) + 2, _f(2, 3, 3)), (2, 3, 3)),  # per pixel
                        (ElementwiseAffine(np.broadcast_to(_f(2, 1, 1) + 2, (2, 3, 3)).copy(),
                                           np.broadcast_to(_f(2, 1, 1), (2, 3, 3)).copy()), (2, 3, 3)),
                        (ElementwiseAffine(_f(5) + 2, _f(5)), (5,))],
    BatchNorm: [(BatchNorm(_f(5) + 1, _f(5), _f(5), rng.uniform(0.2, 2, 5).astype(np.float32)), (5,)),
                (BatchNorm(_f(3) - 1, _f(3), _f(3), rng.uniform(0.2, 2, 3).astype(np.float32), 1e-3, True), (3, 4, 2))],
    AvgPool2d: [(AvgPool2d((2, 2), (2, 2)), (2, 4, 6)), (AvgPool2d((3, 2), (1, 2)), (1, 5, 5))],
    Flatten: [(Flatten(), (2, 3, 4))],
    ReLU: [(ReLU(), (7,)), (ReLU(), (2, 3, 3))],
    ParamRamp: [(ParamRamp(rng.uniform(0, 0.8, 7).astype(np.float32), 0.01), (7,)),
                (ParamRamp(rng.uniform(0, 0.8, (2, 3, 3)).astype(np.float32), 0.0), (2, 3, 3)),
                (ParamRamp(np.zeros(3, np.float32), 0.2), (3,))],
}
CASES = [pytest.param(layer, shape, id=f"{type(layer).__name__}-{i}")
         for kind in KINDS for i, (layer, shape) in enumerate(SAMPLES.get(kind, []))]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _x(shape: tuple[int, ...], n: int = 3) -> np.ndarray:
    return rng.uniform(-1, 1, (n, *shape))


def _arrays_equal(a: Layer, b: Layer) -> bool:
    return type(a) is type(b) and repr(a) == repr(b) and a.arrays().keys() == b.arrays().keys() and all(
        np.array_equal(a.arrays()[k], b.arrays()[k]) for k in a.arrays())


def test_every_kind_has_a_sample_and_implements_the_contract() -> None:
    for kind in KINDS:
        assert kind in SAMPLES, f"{kind.__name__} has no sample in tests/test_layers.py"
        assert not inspect.isabstract(kind), f"{kind.__name__} lacks {sorted(kind.__abstractmethods__)}"
        assert issubclass(kind, (AffineLayer, ActivationLayer))
        assert kind.module_types
    assert len({k.kind for k in KINDS}) == len(KINDS)
    assert sum(len(k.onnx_ops) for k in KINDS) == len(ONNX_OPS)  # no operator owned twice


def test_a_kind_missing_a_method_cannot_be_built() -> None:
    class Half(AffineLayer):  # no bound maps, no ONNX, no MILP
        kind = "half"

        def output_shape(self, shape):  # type: ignore[no-untyped-def]
            return shape

    with pytest.raises(TypeError, match="abstract"):
        Half()


@pytest.mark.parametrize("layer, shape", CASES)
def test_torch_module_and_read_back(layer: Layer, shape: tuple[int, ...]) -> None:
    net = Network(shape, (layer,))
    m = layer.to_module()
    back = type(layer).from_module(m)
    assert _arrays_equal(back, net.layers[0])
    x = _x(shape)
    y = m.double()(torch.as_tensor(x)).numpy()
    assert y.shape == (len(x), *net.output_shape)


@pytest.mark.parametrize("layer, shape", CASES)
def test_model_pt_state_round_trip(layer: Layer, shape: tuple[int, ...]) -> None:
    net = Network(shape, (layer,), "one")
    buf = io.BytesIO()
    torch.save(net.to_state(), buf)
    buf.seek(0)
    back = Network.from_state(torch.load(buf, weights_only=True))
    assert back.input_shape == shape and back.name == "one"
    assert _arrays_equal(back.layers[0], net.layers[0])


def test_bad_saved_state_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unknown layer kind 'maxpool'"):
        layer_from_state({"kind": "maxpool"})
    with pytest.raises(ModelError, match="fields"):
        layer_from_state({"kind": "dense", "weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("layer, shape", CASES)
def test_onnx_export_import_matches_onnxruntime(layer: Layer, shape: tuple[int, ...]) -> None:
    net = Network(shape, (layer,))
    model = network_to_onnx(net)
    x = _x(shape, 1).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0].reshape(1, -1)
    assert np.allclose(got, net.forward(x), atol=1e-5)
    assert np.allclose(network_from_onnx(model).forward(x), net.forward(x), atol=1e-5)


def test_every_onnx_operator_has_an_importer() -> None:
    for op, kind in ONNX_OPS.items():
        assert op in kind.onnx_ops
    node = helper.make_node("Relu", ["x"], ["y"])
    assert ONNX_OPS[node.op_type] is ReLU


@pytest.mark.parametrize("layer, shape", [c for c in CASES if isinstance(c.values[0], AffineLayer)])
def test_affine_maps_agree_with_the_forward_pass(layer: AffineLayer, shape: tuple[int, ...]) -> None:
    """linear_map (MILP), interval (IBP) and backward (CROWN) are the same affine map as torch."""
    kind, m = type(layer), layer.to_module().double()
    out_shape = Network(shape, (layer,)).output_shape
    x = _x(shape)
    y = m(torch.as_tensor(x)).reshape(len(x), -1).numpy()
    rows, cols, vals, bias = layer.linear_map(shape)
    M = np.zeros((int(np.prod(out_shape)), int(np.prod(shape))))
    np.add.at(M, (rows, cols), vals)
    assert np.allclose(x.reshape(len(x), -1) @ M.T + bias, y, atol=1e-5)
    # IBP: the interval contains every sampled point of the box.
    lo, hi = torch.as_tensor(x.min(0, keepdims=True)), torch.as_tensor(x.max(0, keepdims=True))
    ilo, ihi = kind.interval(m, lo, hi)
    assert (ilo.reshape(1, -1).numpy() <= y + 1e-9).all() and (y <= ihi.reshape(1, -1).numpy() + 1e-9).all()
    # CROWN: A @ f(x) == backward(A) . x + const, for random coefficient rows A.
    A = torch.as_tensor(rng.normal(size=(1, 2, 3, *out_shape)))
    Ain, const = kind.backward(m, A, shape, out_shape)
    assert tuple(Ain.shape) == (1, 2, 3, *shape)
    lhs = np.einsum("pqk,nk->npq", A.reshape(2, 3, -1).numpy(), y)
    rhs = np.einsum("pqk,nk->npq", Ain.reshape(2, 3, -1).numpy(), x.reshape(len(x), -1))
    if const is not None:
        rhs = rhs + const.reshape(1, 2, 3).numpy()
    assert np.allclose(lhs, rhs, atol=1e-5)


@pytest.mark.parametrize("layer, shape", [c for c in CASES if isinstance(c.values[0], ActivationLayer)])
def test_activation_relaxation_bounds_the_activation(layer: ActivationLayer, shape: tuple[int, ...]) -> None:
    kind, m = type(layer), layer.to_module().double()
    lo = torch.as_tensor(rng.uniform(-2, 1, (4, *shape)))
    hi = lo + torch.as_tensor(rng.uniform(0, 2, (4, *shape)))
    ilo, ihi = kind.interval(m, lo, hi)
    stable = ~kind.unstable(m, lo, hi)
    assert stable.any() and (~stable).any()
    for tight in (False, True):  # CROWN's adaptive lines and Lyu et al.'s tight ones
        r = kind.relax(m, lo, hi, tight)
        # a neuron is stable exactly where its two lines coincide (the activation is linear on the box)
        lower_b = torch.zeros_like(lo) if r.lower_b is None else r.lower_b
        assert torch.allclose(r.lower_d[stable], r.upper_d[stable])
        assert torch.allclose(lower_b[stable], r.upper_b[stable])
        assert torch.equal(r.unstable, ~stable)
        for t in np.linspace(0, 1, 11):
            z = lo + (hi - lo) * t
            y = m(z)
            low = r.lower_d * z + (0 if r.lower_b is None else r.lower_b)
            assert (low <= y + 1e-9).all() and (y <= r.upper_d * z + r.upper_b + 1e-9).all()
            assert (ilo <= y + 1e-12).all() and (y <= ihi + 1e-12).all()


@pytest.mark.parametrize("layer, shape", [c for c in CASES if isinstance(c.values[0], ActivationLayer)])
def test_activation_states_partition_the_neurons(layer: ActivationLayer, shape: tuple[int, ...]) -> None:
    """``states`` (what ``vfnn stats`` counts): one mask per ``state_names`` entry, every neuron in
    exactly one, the ``unstable_states`` together exactly :meth:`unstable`, also on bounds ending
    exactly at 0."""
    kind, m = type(layer), layer.to_module().double()
    lo = torch.as_tensor(rng.uniform(-2, 1, (6, *shape)))
    hi = lo + torch.as_tensor(rng.uniform(0, 2, (6, *shape)))
    lo[0], hi[1], hi[2] = 0.0, 0.0, lo[2]  # edges on the kink at 0, and single points
    lo[1] = lo[1].clamp(max=0)
    states = kind.states(m, lo, hi)
    assert tuple(states) == kind.state_names and set(kind.unstable_states) <= set(kind.state_names)
    assert torch.equal(sum(v.long() for v in states.values()), torch.ones_like(lo, dtype=torch.long))
    unstable = torch.zeros_like(lo, dtype=torch.bool)
    for name in kind.unstable_states:
        unstable |= states[name]
    assert torch.equal(unstable, kind.unstable(m, lo, hi))


@pytest.mark.parametrize("layer, shape", CASES)
def test_marabou_form_computes_the_same_function(layer: Layer, shape: tuple[int, ...]) -> None:
    net = Network(shape, (layer,))
    if isinstance(layer, ElementwiseAffine) and layer.scale.ndim == 3 and layer.per_channel() is None:
        from vfnn.verifiers.base import UnsupportedProblem

        with pytest.raises(UnsupportedProblem, match="per-pixel"):
            marabou_network(net)
        return
    x = _x(shape)
    assert np.allclose(marabou_network(net).forward(x), net.forward(x), atol=1e-5)


def _ramp_net(seed: int) -> Network:
    g = np.random.default_rng(seed)
    layers: list[Layer] = []
    prev = 6
    for h in (8, 8):
        layers += [Dense(g.normal(0, 0.6, (h, prev)).astype(np.float32), g.normal(0, 0.2, h).astype(np.float32)),
                   ParamRamp(g.uniform(0.1, 1.0, h).astype(np.float32), 0.01)]
        prev = h
    return Network((6,), (*layers, Dense(g.normal(0, 0.6, (3, prev)).astype(np.float32), np.zeros(3, np.float32))))


@pytest.mark.parametrize("seed", range(4))
def test_paramramp_network_bounds_are_sound_and_crown_beats_ibp(seed: int) -> None:
    from vfnn.bounds import compute_bounds

    net = _ramp_net(seed)
    g = np.random.default_rng(seed)
    centre = g.uniform(-1, 1, (2, 6))
    lo, hi = torch.as_tensor(centre - 0.3), torch.as_tensor(centre + 0.3)
    model = net.to_torch().double()
    ibp = compute_bounds(model, lo, hi, method="ibp")
    crown = compute_bounds(model, lo, hi, method="crown", intersect_ibp=False, relaxation="adaptive")
    tight = compute_bounds(model, lo, hi, method="crown", intersect_ibp=False, relaxation="tight")
    default = compute_bounds(model, lo, hi, method="crown", intersect_ibp=False)  # ParamRamp's default: tight
    assert torch.equal(default.lower, tight.lower) and torch.equal(default.upper, tight.upper)
    xs = lo.numpy()[:, None] + (hi - lo).numpy()[:, None] * g.uniform(0, 1, (2, 500, 6))
    ys = np.stack([net.forward(x) for x in xs])
    for b in (ibp, crown, tight):
        assert (b.lower.numpy()[:, None] <= ys + 1e-7).all() and (ys <= b.upper.numpy()[:, None] + 1e-7).all()
    # tight lines: CROWN is never looser than IBP on the pre-activations it computes from IBP's
    # (adaptive lines can be: as for ReLU, the tight ones are what Theorem 2 needs)
    crown_ibp = compute_bounds(model, lo, hi, method="crown-ibp")
    assert (crown_ibp.lower >= ibp.lower - 1e-7).all() and (crown_ibp.upper <= ibp.upper + 1e-7).all()
    with pytest.raises(ModelError, match="alpha-crown"):
        compute_bounds(model, lo, hi, method="alpha-crown")


_merge_rng = np.random.default_rng(11)  # its own stream: the shared ``rng`` keeps the other tests' draws


def _w(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (_merge_rng.normal(size=shape) * scale).astype(np.float32)


def _bends(*shape: int) -> np.ndarray:
    return _merge_rng.uniform(0.1, 0.8, shape).astype(np.float32)


@pytest.mark.parametrize("layers, shape, ops", [
    pytest.param((Dense(_w(8, 6), _w(8)), ParamRamp(_bends(8), 0.01), Dense(_w(8, 8), _w(8)), ParamRamp(_bends(8), 0.0),
                  Dense(_w(3, 8), _w(3))), (6,), "Gemm Relu Gemm Relu Gemm", id="fc"),
    pytest.param((Conv2d(_w(2, 1, 3, 3), _w(2)), ParamRamp(_bends(2, 4, 4), 0.01),
                  Conv2d(_w(3, 2, 3, 3), _w(3), (1, 1), (1, 1, 1, 1)), ParamRamp(_bends(3, 4, 4), 0.0), Flatten(),
                  Dense(_w(4, 48), _w(4))), (1, 6, 6), "Conv Add Relu Conv Add Relu Flatten Gemm", id="cnn"),
    pytest.param((ParamRamp(_bends(6), 0.01), Dense(_w(3, 6), _w(3))), (6,), "Gemm Relu Gemm", id="first-layer"),
    pytest.param((Conv2d(_w(2, 1, 3, 3), _w(2)), ParamRamp(np.repeat(_bends(2, 1, 1), 16).reshape(2, 4, 4), 0.0),
                  Flatten(), Dense(_w(3, 32), _w(3))), (1, 6, 6), "Conv Relu Flatten Gemm", id="per-channel-bends"),
    pytest.param((ElementwiseAffine(_w(6, scale=0.1) + 2, _w(6)), Dense(_w(8, 6), _w(8)), ParamRamp(_bends(8), 0.0),
                  Dense(_w(3, 8), _w(3))), (6,), "Mul Add Gemm Relu Gemm", id="user-affine-kept"),
    pytest.param((Conv2d(_w(2, 1, 3, 3), _w(2)), ParamRamp(_bends(2, 4, 4), 0.01), AvgPool2d((2, 2), (2, 2)),
                  Flatten(), Dense(_w(3, 8), _w(3))), (1, 6, 6), "Conv Add Relu Conv AveragePool Flatten Gemm",
                 id="before-pooling"),
])
def test_paramramp_export_merges_its_linear_maps_into_the_neighbouring_layers(layers, shape, ops) -> None:
    """The expansion and the combination are multiplied into the Gemm/Conv before and after (through
    a Flatten), so the ReLU graph has no Gemm/Conv the model has not (only a per-pixel bend shift,
    an Add, and a 1x1 Conv where a pooling layer follows) and onnxruntime equals the model to 1e-5."""
    net = Network(shape, layers)
    model = network_to_onnx(net)
    assert " ".join(n.op_type for n in model.graph.node) == ops
    session = ort.InferenceSession(model.SerializeToString())
    x = _merge_rng.uniform(-1, 1, (20, *shape)).astype(np.float32)
    y = np.concatenate([session.run(None, {"input": x[i: i + 1]})[0] for i in range(len(x))])
    assert np.abs(y - net.forward(x)).max() < 1e-5
    assert np.abs(network_from_onnx(model).forward(x) - net.forward(x)).max() < 1e-5


def test_paramramp_milp_agrees_with_the_exported_relu_graph_and_marabou() -> None:
    from vfnn.spec import robustness_spec
    from vfnn.verifiers import get_verifier

    net = _ramp_net(7)
    relu_net = network_from_onnx(network_to_onnx(net))
    assert not any(isinstance(layer, ParamRamp) for layer in relu_net.layers)
    x = np.random.default_rng(1).uniform(-1, 1, 6)
    label = int(np.argmax(net.forward(x[None])[0]))
    marabou = get_verifier("marabou")
    for eps in (0.05, 0.4):
        spec = robustness_spec(x, label, eps, 3, clip=None)
        a = get_verifier("milp").verify(net, spec, 60)
        b = get_verifier("milp").verify(relu_net, spec, 60)
        assert a.status == b.status and a.status in ("sat", "unsat"), (eps, a.status, b.status, a.message)
        if marabou.availability().available:  # Marabou reads the exported ReLU graph unchanged
            m = marabou.verify(net, spec, 60, {"margin": 1e-6}, unstable_method=None)
            assert m.status == a.status, (eps, m.status, m.message)


def test_conv_paramramp_milp_agrees_with_the_exported_relu_graph_and_marabou() -> None:
    """The conv form of the export (expansion and combination as 1x1 Convs) is the same function
    to every verifier: milp on the ParamRamp net, milp on its ReLU graph and Marabou agree."""
    from vfnn.spec import robustness_spec
    from vfnn.verifiers import get_verifier

    g = np.random.default_rng(5)
    net = Network((1, 5, 5), (Conv2d(g.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32), _f(2)),
                              ParamRamp(g.uniform(0.1, 0.8, (2, 3, 3)).astype(np.float32), 0.01), Flatten(),
                              Dense(g.normal(0, 0.5, (3, 18)).astype(np.float32), _f(3))))
    relu_net = network_from_onnx(network_to_onnx(net))
    assert not any(isinstance(layer, ParamRamp) for layer in relu_net.layers)
    x = g.uniform(0, 1, 25)
    assert np.allclose(relu_net.forward(x.reshape(1, 1, 5, 5)), net.forward(x.reshape(1, 1, 5, 5)), atol=1e-5)
    label = int(np.argmax(net.forward(x.reshape(1, 1, 5, 5))[0]))
    marabou = get_verifier("marabou")
    statuses = set()
    for eps in (0.01, 2.0):
        spec = robustness_spec(x, label, eps, 3, clip=None)
        a = get_verifier("milp").verify(net, spec, 60)
        b = get_verifier("milp").verify(relu_net, spec, 60)
        assert a.status == b.status and a.status in ("sat", "unsat"), (eps, a.status, b.status, a.message)
        statuses.add(a.status)
        if marabou.availability().available:
            m = marabou.verify(net, spec, 60, {"margin": 1e-6}, unstable_method=None)
            assert m.status == a.status, (eps, m.status, m.message)
    assert statuses == {"sat", "unsat"}  # both answers are exercised


def test_batch_norm_folds_into_the_layer_before_it() -> None:
    """simplified() (and so every export) turns batch-norm into the eval-mode affine and folds it
    into the preceding Conv2d / Dense: the same function with no batch-norm left."""
    g = np.random.default_rng(3)

    def bn(c: int, spatial: bool) -> BatchNorm:
        return BatchNorm(g.uniform(0.5, 2, c).astype(np.float32), _f(c), _f(c), g.uniform(0.2, 2, c).astype(np.float32),
                         1e-5, spatial)

    net = Network((2, 5, 5), (Conv2d(_f(3, 2, 2, 2), _f(3)), bn(3, True), ReLU(), Flatten(),
                              Dense(_f(4, 48), _f(4)), bn(4, False), ReLU(), Dense(_f(2, 4), _f(2))))
    flat = net.simplified()
    assert [type(layer) for layer in flat.layers] == [Conv2d, ReLU, Flatten, Dense, ReLU, Dense]
    x = _x((2, 5, 5), 4)
    assert np.allclose(flat.forward(x), net.forward(x), atol=1e-5)
    model = net.to_torch()
    assert all(not m.training for m in model if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d))
    assert np.allclose(Network.from_torch(model.train(), (2, 5, 5)).forward(x), net.forward(x), atol=1e-5)


@pytest.mark.parametrize("module, message", [
    (torch.nn.Conv2d(1, 2, 3, dilation=2), "Conv2d: groups, dilation"),
    (torch.nn.AvgPool2d(2, ceil_mode=True), "AvgPool2d: padding, ceil_mode"),
    (torch.nn.Flatten(0), "Flatten: only Flatten(start_dim=1"),
    (torch.nn.MaxPool2d(2), "torch module MaxPool2d is not supported"),
])
def test_torch_settings_vfnn_cannot_represent_are_one_line_errors(module: torch.nn.Module, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        Network.from_torch(torch.nn.Sequential(module), (1, 8, 8))
    from vfnn.bounds import compute_bounds

    with pytest.raises(ModelError, match="module 0"):  # bounds name the module too
        compute_bounds(torch.nn.Sequential(module), torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8))


def test_unstable_record_counts_paramramp_neurons_crossing_either_kink() -> None:
    from vfnn.spec import robustness_spec
    from vfnn.stats import unstable_record

    eye = np.eye(3, dtype=np.float32)
    net = Network((3,), (Dense(eye, np.zeros(3, np.float32)), ParamRamp(np.full(3, 0.5, np.float32), 0.01),
                         Dense(eye[:2], np.zeros(2, np.float32))))
    # boxes of half-width 0.2 around -0.5 (stable left), 0.5 (crosses r), 0.1 (crosses 0)
    spec = robustness_spec(np.array([-0.5, 0.5, 0.1]), 0, 0.2, 2, clip=None)
    layer = unstable_record(net, spec).layers[0]
    assert (layer.unstable, layer.active, layer.inactive) == (2, 0, 1)
    assert layer.states == {"left": 1, "middle": 0, "right": 0, "left-unstable": 1, "right-unstable": 1, "both": 0}


# -- a new layer kind in this file alone: registered, then bounds, export, import, milp and model.pt use it --
class NegateModule(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


@dataclasses.dataclass(frozen=True)
class Negate(AffineLayer):
    """y = -x (ONNX Neg): a toy kind that exists only in this test."""

    kind: ClassVar[str] = "negate"
    module_types: ClassVar[tuple[type[torch.nn.Module], ...]] = (NegateModule,)
    onnx_ops: ClassVar[tuple[str, ...]] = ("Neg",)

    def output_shape(self, shape):  # type: ignore[no-untyped-def]
        return shape

    def to_module(self):  # type: ignore[no-untyped-def]
        return NegateModule()

    @classmethod
    def from_module(cls, m):  # type: ignore[no-untyped-def]
        return cls()

    @classmethod
    def center(cls, m, x):  # type: ignore[no-untyped-def]
        return -x

    @classmethod
    def radius(cls, m, d):  # type: ignore[no-untyped-def]
        return d

    @classmethod
    def backward(cls, m, A, in_shape, out_shape):  # type: ignore[no-untyped-def]
        return -A, None

    def linear_map(self, shape):  # type: ignore[no-untyped-def]
        idx = np.arange(int(np.prod(shape)))
        return idx, idx, -np.ones(idx.size), np.zeros(idx.size)

    def to_onnx(self, index, x, y):  # type: ignore[no-untyped-def]
        return [helper.make_node("Neg", [x], [y])], []

    @classmethod
    def from_onnx(cls, imp, node):  # type: ignore[no-untyped-def]
        imp.push(cls(), node)

    def for_marabou(self, shape):  # type: ignore[no-untyped-def]
        n = int(np.prod(shape))
        return Dense(-np.eye(n, dtype=np.float32), np.zeros(n, np.float32))


@pytest.fixture
def negate_kind():
    from vfnn.layers import register_kind

    register_kind(Negate)
    try:
        yield Negate
    finally:
        KINDS.remove(Negate)
        del ONNX_OPS["Neg"]


def test_a_kind_defined_outside_vfnn_works_everywhere(negate_kind: type[Layer]) -> None:
    from vfnn.bounds import METHODS, compute_bounds
    from vfnn.spec import robustness_spec
    from vfnn.verifiers import get_verifier

    g = np.random.default_rng(5)
    w1, b1 = g.normal(0, 0.8, (5, 6)).astype(np.float32), g.normal(0, 0.3, 5).astype(np.float32)
    w2 = g.normal(0, 0.8, (3, 5)).astype(np.float32)
    net = Network((6,), (Dense(w1, b1), Negate(), ReLU(), Dense(w2, np.zeros(3, np.float32))))
    folded = Network((6,), (Dense(-w1, -b1), ReLU(), Dense(w2, np.zeros(3, np.float32))))
    x = g.uniform(0.2, 0.8, (50, 6))
    assert np.allclose(net.forward(x), folded.forward(x), atol=1e-6)
    # ONNX: exported with its own operator, read back as the same kind
    model = network_to_onnx(net)
    assert "Neg" in {n.op_type for n in model.graph.node}
    back = network_from_onnx(model)
    assert any(isinstance(layer, Negate) for layer in back.layers)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"input": x[:1].astype(np.float32)})[0], net.forward(x[:1]), atol=1e-5)
    # model.pt form
    buf = io.BytesIO()
    torch.save(net.to_state(), buf)
    buf.seek(0)
    assert isinstance(Network.from_state(torch.load(buf, weights_only=True)).layers[1], Negate)
    # bounds: every method is sound and equals the folded network's
    lo, hi = torch.as_tensor(x.min(0, keepdims=True)), torch.as_tensor(x.max(0, keepdims=True))
    for method in METHODS:
        b = compute_bounds(net.to_torch().double(), lo, hi, method=method)
        f = compute_bounds(folded.to_torch().double(), lo, hi, method=method)
        assert torch.allclose(b.lower, f.lower, atol=1e-6) and torch.allclose(b.upper, f.upper, atol=1e-6), method
    # milp decides the same as on the folded network
    # (solves fork from this process, which has the kind; a plug-in registered through the
    # ``vfnn.layers`` entry point is in every process anyway)
    from vfnn.verifiers.process import allow_plain_fork

    label = int(np.argmax(net.forward(x[:1])[0]))
    previous = allow_plain_fork(True)
    try:
        with torch.enable_grad():  # this file's tests run without autograd; the attack needs it
            for eps in (0.02, 0.5):
                spec = robustness_spec(x[0], label, eps, 3)
                a, b = get_verifier("milp").verify(net, spec, 30), get_verifier("milp").verify(folded, spec, 30)
                assert a.status == b.status and a.status in ("sat", "unsat"), (eps, a.status, a.message)
    finally:
        allow_plain_fork(previous)
