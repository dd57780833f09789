"""ONNX import and export for :class:`vfnn.network.Network`.

Import walks the graph as a chain from its one input to its one output and normalises it:
MatMul+Add becomes one Dense, Sub/Div/Mul/Add by constants and BatchNormalization become
ElementwiseAffine layers that are folded into a neighbouring linear layer, no-op shape operators
disappear.  Export writes only Gemm, Conv, Relu, Flatten and AveragePool, the subset that
Marabou and alpha,beta-CROWN parse correctly (see shared notes: Marabou mis-reads Sub/Div).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vfnn.errors import ModelError
from vfnn.network import AvgPool2d, Conv2d, Dense, ElementwiseAffine, Flatten, Layer, Network, ReLU, per_channel_values

SUPPORTED_OPS = (
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Conv", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "BatchNormalization", "AveragePool", "Transpose", "Constant", "Identity", "Dropout",
)
EXPORT_OPSET = 13


def load_onnx(path: str | Path) -> Network:
    """Read an ONNX file into a normalised :class:`Network` (raises ModelError on any problem)."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except Exception as exc:  # protobuf raises several unrelated types for corrupt files
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return network_from_onnx(model, name=path.stem, where=str(path))


def network_from_onnx(model: onnx.ModelProto, name: str = "network", where: str = "model") -> Network:
    """Convert an in-memory ONNX model (see :func:`load_onnx`)."""
    return _Importer(model, where).run(name)


class _Importer:
    def __init__(self, model: onnx.ModelProto, where: str):
        self.where = where
        graph = model.graph
        self.graph = graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelError(f"{where}: vfnn reads networks with one input and one output "
                             f"(found {len(inputs)} inputs, {len(graph.output)} outputs)")
        self.input_name = inputs[0].name
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim]
        if not dims:
            raise ModelError(f"{where}: input {self.input_name!r} has no shape")
        # The first dimension is the batch unless the input is a plain vector.
        self.input_shape = tuple(dims[1:]) if len(dims) > 1 else tuple(dims)
        self.shape = self.input_shape
        self.layers: list[Layer] = []
        self.perm: np.ndarray | None = None  # pending Transpose, folded into the next Dense

    def fail(self, node: onnx.NodeProto, msg: str) -> ModelError:
        return ModelError(f"{self.where}: node {node.name or node.output[0]!r} ({node.op_type}): {msg}")

    def run(self, name: str) -> Network:
        current = self.input_name
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
                continue
            if node.op_type not in SUPPORTED_OPS:
                raise self.fail(node, f"unsupported operator; vfnn supports {', '.join(SUPPORTED_OPS)}")
            if all(i in self.consts for i in node.input if i):
                raise self.fail(node, "constant subgraphs are not supported; run onnx-simplifier first")
            dynamic = [i for i in node.input if i and i not in self.consts]
            if dynamic != [current]:
                raise self.fail(node, "vfnn reads sequential networks only (this node branches or merges)")
            self.apply(node)
            current = node.output[0]
        if current != self.graph.output[0].name:
            raise ModelError(f"{self.where}: the graph output {self.graph.output[0].name!r} is not "
                             "the end of the node chain")
        if self.perm is not None:
            raise ModelError(f"{self.where}: a Transpose is not followed by a flatten and a dense layer")
        try:
            return Network(self.input_shape, tuple(self.layers), name).simplified()
        except ModelError as exc:
            raise ModelError(f"{self.where}: {exc}") from None

    def const(self, node: onnx.NodeProto) -> tuple[np.ndarray, bool]:
        """The constant operand of a binary node, and whether it is the first operand."""
        first = node.input[0] in self.consts
        return self.consts[node.input[0] if first else node.input[1]].astype(np.float64), first

    def broadcast(self, node: onnx.NodeProto, c: np.ndarray) -> np.ndarray:
        full = (1,) + tuple(self.shape)
        try:
            if c.ndim > len(full):
                c = c.reshape(c.shape[c.ndim - len(full):]) if np.prod(c.shape[: c.ndim - len(full)]) == 1 else c
            return np.broadcast_to(c, full)[0].copy()
        except ValueError:
            raise self.fail(node, f"constant of shape {c.shape} does not broadcast to {self.shape}") from None

    def push(self, layer: Layer, node: onnx.NodeProto) -> None:
        if self.perm is not None and not isinstance(layer, (Flatten, Dense)):
            raise self.fail(node, "only a flatten and a dense layer may follow a Transpose")
        if isinstance(layer, Dense) and self.perm is not None:
            w = np.empty_like(layer.weight)
            w[:, self.perm] = layer.weight
            layer, self.perm = Dense(w, layer.bias), None
        try:
            shape = Network(self.shape, (layer,)).output_shape
        except ModelError as exc:
            raise self.fail(node, str(exc)) from None
        self.layers.append(layer)
        self.shape = shape

    def dense(self, node: onnx.NodeProto, w_out_in: np.ndarray, bias: np.ndarray) -> None:
        if len(self.shape) != 1:
            if all(d == 1 for d in self.shape[:-1]):  # e.g. (1, 1, 5) in ACAS Xu: an implicit flatten
                self.push(Flatten(), node)
            else:
                raise self.fail(node, f"a matrix product needs a flat input, got shape {self.shape}")
        self.push(Dense(w_out_in, bias), node)

    def apply(self, node: onnx.NodeProto) -> None:  # noqa: C901 - one branch per operator
        op, a = node.op_type, _attrs(node)
        if op in ("Identity", "Dropout"):
            return
        if op == "Relu":
            self.push(ReLU(), node)
        elif op == "Gemm":
            if a.get("transA", 0):
                raise self.fail(node, "transA=1 is not supported")
            w = self.consts.get(node.input[1])
            if w is None:
                raise self.fail(node, "the weight must be a constant")
            w = w.astype(np.float64) * a.get("alpha", 1.0)
            w = w if a.get("transB", 0) else w.T
            bias = (self.consts[node.input[2]].astype(np.float64) * a.get("beta", 1.0)
                    if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0]))
            self.dense(node, w, np.broadcast_to(bias.reshape(-1), (w.shape[0],)).copy())
        elif op == "MatMul":
            w, first = self.const(node)
            if first or w.ndim != 2:
                raise self.fail(node, "only input @ constant-matrix is supported")
            self.dense(node, w.T, np.zeros(w.shape[1]))
        elif op in ("Add", "Sub", "Mul", "Div"):
            c, first = self.const(node)
            c = self.broadcast(node, c)
            if op == "Div" and first:
                raise self.fail(node, "dividing a constant by the input is not piecewise linear")
            one, zero = np.ones(self.shape), np.zeros(self.shape)
            if op == "Div" and np.any(c == 0):
                raise self.fail(node, "division by zero")
            if op == "Add":
                scale, shift = one, c
            elif op == "Sub":
                scale, shift = (-one, c) if first else (one, -c)
            else:
                scale, shift = (c if op == "Mul" else 1.0 / c), zero
            self.push(ElementwiseAffine(scale, shift), node)
        elif op == "BatchNormalization":
            if len(self.shape) not in (1, 3):
                raise self.fail(node, f"batch-norm on shape {self.shape} is not supported")
            g, b, mean, var = (self.consts[i].astype(np.float64) for i in node.input[1:5])
            s = g / np.sqrt(var + a.get("epsilon", 1e-5))
            extra = (1,) * (len(self.shape) - 1)
            self.push(ElementwiseAffine(np.broadcast_to(s.reshape(-1, *extra), self.shape).copy(),
                                        np.broadcast_to((b - mean * s).reshape(-1, *extra), self.shape).copy()), node)
        elif op == "Conv":
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise self.fail(node, "grouped or dilated convolutions are not supported")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                raise self.fail(node, "auto_pad is not supported; export with explicit pads")
            w = self.consts[node.input[1]]
            bias = self.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
            if w.ndim != 4:
                raise self.fail(node, "only 2-D convolutions are supported")
            p = list(a.get("pads", [0, 0, 0, 0]))
            self.push(Conv2d(w, bias, tuple(a.get("strides", [1, 1])), (p[0], p[1], p[2], p[3])), node)
        elif op == "AveragePool":
            if any(a.get("pads", [0, 0, 0, 0])):
                raise self.fail(node, "padded average pooling is not supported")
            k = tuple(a["kernel_shape"])
            self.push(AvgPool2d(k, tuple(a.get("strides", k))), node)
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self.reshape(node, op, a)
        elif op == "Transpose":
            perm = list(a.get("perm", []))
            if not perm or perm[0] != 0:
                raise self.fail(node, "only transposes that keep the batch axis first are supported")
            sample_perm = [p - 1 for p in perm[1:]]
            idx = np.arange(int(np.prod(self.shape))).reshape(self.shape).transpose(sample_perm).reshape(-1)
            if not np.array_equal(idx, np.arange(idx.size)):
                self.perm = idx if self.perm is None else self.perm[idx]
            self.shape = tuple(self.shape[p] for p in sample_perm)

    def reshape(self, node: onnx.NodeProto, op: str, a: dict) -> None:
        n = int(np.prod(self.shape))
        if op == "Flatten":
            if a.get("axis", 1) != 1:
                raise self.fail(node, "only Flatten(axis=1) is supported")
            target: tuple[int, ...] = (n,)
        elif op == "Reshape":
            shape = [int(s) for s in self.consts[node.input[1]].reshape(-1)]
            shape = [n if s == -1 and len(shape) == 1 else s for s in shape]
            if len(shape) == 1 or shape[0] in (1, -1, 0):
                rest = shape[1:] if len(shape) > 1 else shape
                known = int(np.prod([s for s in rest if s > 0]))
                target = tuple(n // known if s == -1 else s for s in rest)
            else:
                raise self.fail(node, f"reshape to {shape} changes the batch axis")
            if int(np.prod(target)) != n:
                raise self.fail(node, f"cannot reshape {self.shape} to {target}")
        else:  # Squeeze/Unsqueeze: only dimensions of size 1 move, the data order stays
            axes = a.get("axes") or ([int(v) for v in self.consts[node.input[1]]] if len(node.input) > 1 else [])
            full = [1, *self.shape]
            if op == "Squeeze":
                axes = [x % len(full) for x in axes] if axes else [i for i, d in enumerate(full) if d == 1 and i]
                if 0 in axes:
                    raise self.fail(node, "squeezing the batch axis is not supported")
                target = tuple(d for i, d in enumerate(full) if i not in axes)[1:]
            else:
                for ax in sorted(x % (len(full) + len(axes)) for x in axes):
                    full.insert(ax, 1)
                target = tuple(full[1:])
        if len(target) == 1:
            self.push(Flatten(), node)
        elif self.layers and isinstance(self.layers[-1], Flatten) or all(
            d == 1 for d in target[:-1]) or target == self.shape:
            # A reshape to a rank the network does not use for computation: keep the data order.
            self.shape = target
        else:
            raise self.fail(node, f"reshape from {self.shape} to {target} is not a flatten")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def network_to_onnx(net: Network) -> onnx.ModelProto:
    """Build the clean ONNX graph of ``net`` (batch size 1, float32)."""
    if not net.layers:
        raise ModelError(f"{net.name}: a network without layers cannot be exported")
    nodes, inits = [], []
    current = "input"
    for i, layer in enumerate(net.layers):
        out = "output" if i == len(net.layers) - 1 else f"{type(layer).__name__.lower()}_{i}"
        if isinstance(layer, Dense):
            inits += [numpy_helper.from_array(layer.weight.astype(np.float32), f"W{i}"),
                      numpy_helper.from_array(layer.bias.astype(np.float32), f"B{i}")]
            nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out], transB=1))
        elif isinstance(layer, Conv2d):
            inits += [numpy_helper.from_array(layer.weight.astype(np.float32), f"W{i}"),
                      numpy_helper.from_array(layer.bias.astype(np.float32), f"B{i}")]
            kh, kw = layer.weight.shape[2:]
            nodes.append(helper.make_node("Conv", [current, f"W{i}", f"B{i}"], [out], kernel_shape=[kh, kw],
                                          strides=list(layer.stride), pads=list(layer.padding)))
        elif isinstance(layer, ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        elif isinstance(layer, AvgPool2d):
            nodes.append(helper.make_node("AveragePool", [current], [out], kernel_shape=list(layer.kernel),
                                          strides=list(layer.stride)))
        elif isinstance(layer, ElementwiseAffine) and _diagonal_conv(layer) is not None:
            w, b = _diagonal_conv(layer)
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
            nodes.append(helper.make_node("Conv", [current, f"W{i}", f"B{i}"], [out], kernel_shape=[1, 1]))
        elif isinstance(layer, ElementwiseAffine):  # per-pixel affine: no clean form exists
            inits += [numpy_helper.from_array(layer.scale[None].astype(np.float32), f"S{i}"),
                      numpy_helper.from_array(layer.shift[None].astype(np.float32), f"T{i}")]
            nodes += [helper.make_node("Mul", [current, f"S{i}"], [out + "_mul"]),
                      helper.make_node("Add", [out + "_mul", f"T{i}"], [out])]
        current = out
    graph = helper.make_graph(
        nodes, net.name,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, *net.input_shape])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, *net.output_shape])],
        inits,
    )
    model = helper.make_model(graph, producer_name="vfnn", opset_imports=[helper.make_opsetid("", EXPORT_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _diagonal_conv(layer: ElementwiseAffine) -> tuple[np.ndarray, np.ndarray] | None:
    """A per-channel affine on (C, H, W) as the weights of an exact 1x1 Conv, else None."""
    if layer.scale.ndim != 3:
        return None
    s, t = per_channel_values(layer.scale), per_channel_values(layer.shift)
    if s is None or t is None:
        return None
    c = layer.scale.shape[0]
    w = np.zeros((c, c, 1, 1), np.float32)
    w[np.arange(c), np.arange(c), 0, 0] = s
    return w, t.astype(np.float32)


def save_onnx(net: Network, path: str | Path) -> Path:
    """Write the clean export of ``net`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(network_to_onnx(net), str(path))
    return path
