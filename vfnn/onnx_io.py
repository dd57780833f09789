"""ONNX import and export for :class:`vfnn.network.Network`.

Import walks the graph as a chain from its one input to its one output and normalises it:
MatMul+Add becomes one Dense, Sub/Div/Mul/Add by constants and BatchNormalization become
ElementwiseAffine layers that are folded into a neighbouring linear layer, no-op shape operators
disappear.  Export writes only Gemm, Conv, Relu, Flatten and AveragePool, the subset that
Marabou and alpha,beta-CROWN parse correctly (see shared notes: Marabou mis-reads Sub/Div).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from vfnn.errors import ModelError
from vfnn.layers import ONNX_OPS, Dense, Flatten, Layer
from vfnn.layers.merge import export_layers
from vfnn.network import Network

# Operators without a layer of their own: read by the importer itself.
_GRAPH_OPS = ("Constant", "Identity", "Dropout")


def supported_ops() -> tuple[str, ...]:
    """Every operator the importer reads: the registered kinds' and the graph's own."""
    return (*ONNX_OPS, *_GRAPH_OPS)
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


def network_from_onnx(model: onnx.ModelProto, name: str = "network", where: str = "model",
                      check: bool = True) -> Network:
    """Convert an in-memory ONNX model (see :func:`load_onnx`).

    ``check`` first runs ``onnx.checker`` with type and shape inference: a model that is not valid
    ONNX (wrong attribute types, mixed float32/float64 operands, short initializer data) has no
    meaning that vfnn could verify.  ``check=False`` leaves only the importer's own checks.  The
    graph's input and output are checked first: their messages say more than the checker's."""
    importer = Importer(model, where)
    if check:
        check_model(model, where)
    return importer.run(name)


def check_model(model: onnx.ModelProto, where: str = "model") -> None:
    """Raise a one-line ModelError when ``onnx.checker`` (full check) rejects ``model``."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ValueError (models over 2 GB)
        raise ModelError(f"{where}: not valid ONNX: {_one_line(str(exc) or type(exc).__name__)}") from None


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REQUIRED = object()
_ATTR_KINDS = {"int": AttributeProto.INT, "float": AttributeProto.FLOAT, "ints": AttributeProto.INTS,
               "floats": AttributeProto.FLOATS, "string": AttributeProto.STRING, "tensor": AttributeProto.TENSOR}
_CONSTANT_ATTRS = {"value": "tensor", "value_float": "float", "value_floats": "floats", "value_int": "int",
                   "value_ints": "ints"}


def _decode(t: onnx.TensorProto, where: str) -> np.ndarray:
    """An initializer or Constant tensor as numpy, or a ModelError naming it."""
    try:
        return numpy_helper.to_array(t)
    except Exception as exc:  # data that does not match the declared dims/type raises ValueError, TypeError...
        raise ModelError(f"{where}: tensor {t.name!r} cannot be decoded ({_one_line(str(exc), 160)})") from None


class Importer:
    """Walks an ONNX graph as a chain; layer kinds import their own operators (``from_onnx``)
    through its checked accessors and :meth:`push`."""


    def __init__(self, model: onnx.ModelProto, where: str):
        self.where = where
        graph = model.graph
        self.graph = graph
        self.consts: dict[str, np.ndarray] = {t.name: _decode(t, where) for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelError(f"{where}: vfnn reads networks with one input and one output "
                             f"(found {len(inputs)} inputs, {len(graph.output)} outputs)")
        for value, role in ((inputs[0], "input"), (graph.output[0], "output")):
            elem = value.type.tensor_type.elem_type
            if elem != TensorProto.FLOAT:
                kind = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else str(elem)
                raise ModelError(f"{where}: {role} {value.name!r} has element type {kind}; vfnn reads float32 networks")
        self.input_name = inputs[0].name
        self.input_shape = _sample_shape(inputs[0], where)
        self.shape = self.input_shape
        self.layers: list[Layer] = []
        self.perm: np.ndarray | None = None  # pending Transpose, folded into the next Dense

    def fail(self, node: onnx.NodeProto, msg: str) -> ModelError:
        label = node.name or (node.output[0] if node.output else "") or "<unnamed>"
        return ModelError(f"{self.where}: node {label!r} ({node.op_type}): {msg}")

    # --- checked access to attributes and inputs: every malformed node is a ModelError naming it

    def attr(self, node: onnx.NodeProto, name: str, kind: str, default: Any = _REQUIRED) -> Any:
        """Attribute ``name`` of type ``kind`` (see _ATTR_KINDS); strings come back as str."""
        for a in node.attribute:
            if a.name == name:
                if a.type != _ATTR_KINDS[kind]:
                    got = AttributeProto.AttributeType.Name(a.type) if a.type in AttributeProto.AttributeType.values() \
                        else str(a.type)
                    raise self.fail(node, f"attribute {name!r} must be of type {kind.upper()}, got {got}")
                value = helper.get_attribute_value(a)
                if kind == "string":
                    return value.decode("utf-8", "replace")
                return list(value) if kind in ("ints", "floats") else value
        if default is _REQUIRED:
            raise self.fail(node, f"required attribute {name!r} is missing")
        return default

    def ints(self, node: onnx.NodeProto, name: str, n: int, default: list[int] | None, low: int) -> tuple[int, ...]:
        """An INTS attribute of exactly ``n`` values, each >= ``low``."""
        v = self.attr(node, name, "ints", _REQUIRED if default is None else default)
        if len(v) != n or any(x < low for x in v):
            raise self.fail(node, f"attribute {name!r} must be {n} integers >= {low}, got {list(v)}")
        return tuple(int(x) for x in v)

    def operand(self, node: onnx.NodeProto, index: int, what: str, kind: str = "float",
                optional: bool = False) -> np.ndarray | None:
        """The constant input ``index`` of ``node``: float32 weights (as float64) or int64 indices."""
        if index >= len(node.input) or not node.input[index]:
            if optional:
                return None
            raise self.fail(node, f"input {index} ({what}) is missing")
        name = node.input[index]
        if name not in self.consts:
            raise self.fail(node, f"the {what} {name!r} must be a constant (an initializer or a Constant node)")
        v = self.consts[name]
        if kind == "float":
            if v.dtype != np.float32:
                raise self.fail(node, f"the {what} {name!r} is {v.dtype}; the network computes in float32")
            if not np.all(np.isfinite(v)):
                raise self.fail(node, f"the {what} {name!r} contains NaN or infinite values")
            return v.astype(np.float64)
        if v.dtype.kind not in "iu":
            raise self.fail(node, f"the {what} {name!r} must hold integers, got {v.dtype}")
        return v.astype(np.int64)

    def constant(self, node: onnx.NodeProto) -> np.ndarray:
        """The value of a Constant node, whichever of its value attributes it uses."""
        if len(node.attribute) != 1:
            raise self.fail(node, f"a Constant needs exactly one value attribute, got {len(node.attribute)}")
        name = node.attribute[0].name
        if name not in _CONSTANT_ATTRS:
            raise self.fail(node, f"Constant attribute {name!r} is not supported "
                                  f"(vfnn reads {', '.join(_CONSTANT_ATTRS)})")
        v = self.attr(node, name, _CONSTANT_ATTRS[name])
        if name == "value":
            return _decode(v, f"{self.where}: node {node.name or node.output[0]!r} (Constant)")
        return np.asarray(v, np.float32 if name.startswith("value_float") else np.int64)

    # --- the graph walk

    def run(self, name: str) -> Network:
        current = self.input_name
        defined = {self.input_name, *self.consts}
        for node in self.graph.node:
            if not node.output or not node.output[0]:
                raise self.fail(node, "the node has no output")
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(node, f"operator domain {node.domain!r} is not supported (only the standard ONNX one)")
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self.constant(node)
                defined.add(node.output[0])
                continue
            if node.op_type not in supported_ops():
                raise self.fail(node, f"unsupported operator; vfnn supports {', '.join(supported_ops())}")
            for i in node.input:
                if i and i not in defined:
                    raise self.fail(node, f"input {i!r} is not an initializer, the graph input or an earlier "
                                          "node's output")
            if all(i in self.consts for i in node.input if i):
                raise self.fail(node, "constant subgraphs are not supported; run onnx-simplifier first")
            dynamic = [i for i in node.input if i and i not in self.consts]
            if dynamic != [current]:
                raise self.fail(node, "vfnn reads sequential networks only (this node branches or merges)")
            self.apply(node)
            current = node.output[0]
            defined.update(o for o in node.output if o)
        if current != self.graph.output[0].name:
            raise ModelError(f"{self.where}: the graph output {self.graph.output[0].name!r} is not "
                             "the end of the node chain")
        if self.perm is not None:
            raise ModelError(f"{self.where}: a Transpose is not followed by a flatten and a dense layer")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
                net = Network(self.input_shape, tuple(self.layers), name).simplified()
        except ModelError as exc:
            raise ModelError(f"{self.where}: {exc}") from None
        for i, layer in enumerate(net.layers):  # folding multiplies weights: float32 can overflow
            if (part := layer.nonfinite_part()) is not None:
                raise ModelError(f"{self.where}: layer {i} ({type(layer).__name__}) has a non-finite {part} "
                                 "after folding normalisation into it (float32 overflow)")
        return net

    def const(self, node: onnx.NodeProto) -> tuple[np.ndarray, bool]:
        """The constant operand of a binary node, and whether it is the first operand."""
        if len(node.input) != 2:
            raise self.fail(node, f"expects 2 inputs, got {len(node.input)}")
        first = node.input[0] in self.consts
        return self.operand(node, 0 if first else 1, "constant operand"), first

    def broadcast(self, node: onnx.NodeProto, c: np.ndarray) -> np.ndarray:
        full = (1,) + tuple(self.shape)
        try:
            if c.ndim > len(full):
                c = c.reshape(c.shape[c.ndim - len(full):]) if np.prod(c.shape[: c.ndim - len(full)]) == 1 else c
            return np.broadcast_to(c, full)[0].copy()
        except ValueError:
            raise self.fail(node, f"constant of shape {c.shape} does not broadcast to {self.shape}") from None

    def push(self, layer: Layer, node: onnx.NodeProto) -> None:
        if self.perm is not None:
            if (permuted := layer.permute_input(self.perm)) is None:
                raise self.fail(node, "only a flatten and a dense layer may follow a Transpose")
            layer, self.perm = permuted
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow is refused just below
                single = Network(self.shape, (layer,))
        except ModelError as exc:
            raise self.fail(node, str(exc)) from None
        if (part := single.layers[0].nonfinite_part()) is not None:
            raise self.fail(node, f"the layer's {part} is not finite in float32 (NaN, infinite, or too large)")
        self.layers.append(layer)
        self.shape = single.output_shape

    def dense(self, node: onnx.NodeProto, w_out_in: np.ndarray, bias: np.ndarray) -> None:
        if len(self.shape) != 1:
            if all(d == 1 for d in self.shape[:-1]):  # e.g. (1, 1, 5) in ACAS Xu: an implicit flatten
                self.push(Flatten(), node)
            else:
                raise self.fail(node, f"a matrix product needs a flat input, got shape {self.shape}")
        self.push(Dense(w_out_in, bias), node)

    def apply(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op == "Dropout":
            # run() has made sure that every input but the data is a constant
            if len(node.input) > 2 and node.input[2] and np.any(self.consts[node.input[2]]):
                raise self.fail(node, "Dropout in training mode is random; export the network in eval mode")
        elif op != "Identity":
            ONNX_OPS[op].from_onnx(self, node)

    def check_pad_mode(self, node: onnx.NodeProto) -> None:
        if self.attr(node, "auto_pad", "string", "NOTSET") not in ("NOTSET", "VALID"):
            raise self.fail(node, "auto_pad is not supported; export with explicit pads")


def _sample_shape(value: onnx.ValueInfoProto, where: str) -> tuple[int, ...]:
    """The input's shape without the batch axis; every other dimension must be a fixed size."""
    t = value.type.tensor_type
    dims = list(t.shape.dim)
    if not t.HasField("shape") or not dims:
        raise ModelError(f"{where}: input {value.name!r} has no shape")
    sizes = []
    for axis, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            sizes.append(int(d.dim_value))
        elif axis == 0 and len(dims) > 1:
            sizes.append(1)  # a symbolic batch axis
        else:
            what = f"symbolic dimension {d.dim_param!r}" if d.HasField("dim_param") else (
                f"dimension of size {d.dim_value}" if d.HasField("dim_value") else "dimension of unknown size")
            raise ModelError(f"{where}: input {value.name!r} has a {what} at axis {axis}; vfnn needs a fixed "
                             "size for every axis but the batch axis")
    # The first dimension is the batch unless the input is a plain vector.
    return tuple(sizes[1:]) if len(sizes) > 1 else tuple(sizes)


def network_to_onnx(net: Network) -> onnx.ModelProto:
    """Build the clean ONNX graph of ``net`` (batch size 1, float32)."""
    if not net.layers:
        raise ModelError(f"{net.name}: a network without layers cannot be exported")
    nodes, inits = [], []
    current = "input"
    layers = export_layers(net.layers, net.input_shapes())
    for i, layer in enumerate(layers):
        out = "output" if i == len(layers) - 1 else f"{type(layer).__name__.lower()}_{i}"
        layer_nodes, layer_inits = layer.to_onnx(i, current, out)
        nodes += layer_nodes
        inits += layer_inits
        current = out
    for node in nodes:  # named, so that checker and importer messages can say which node
        node.name = node.output[0]
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


def save_onnx(net: Network, path: str | Path) -> Path:
    """Write the clean export of ``net`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(network_to_onnx(net), str(path))
    return path
