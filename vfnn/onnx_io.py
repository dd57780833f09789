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
from vfnn.network import (
    AvgPool2d,
    Conv2d,
    Dense,
    ElementwiseAffine,
    Flatten,
    Layer,
    Network,
    ReLU,
    nonfinite_part,
    per_channel_values,
)

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


def network_from_onnx(model: onnx.ModelProto, name: str = "network", where: str = "model",
                      check: bool = True) -> Network:
    """Convert an in-memory ONNX model (see :func:`load_onnx`).

    ``check`` first runs ``onnx.checker`` with type and shape inference: a model that is not valid
    ONNX (wrong attribute types, mixed float32/float64 operands, short initializer data) has no
    meaning that vfnn could verify.  ``check=False`` leaves only the importer's own checks.  The
    graph's input and output are checked first: their messages say more than the checker's."""
    importer = _Importer(model, where)
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


class _Importer:
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
            if node.op_type not in SUPPORTED_OPS:
                raise self.fail(node, f"unsupported operator; vfnn supports {', '.join(SUPPORTED_OPS)}")
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
            if (part := nonfinite_part(layer)) is not None:
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
        if self.perm is not None and not isinstance(layer, (Flatten, Dense)):
            raise self.fail(node, "only a flatten and a dense layer may follow a Transpose")
        if isinstance(layer, Dense) and self.perm is not None:
            w = np.empty_like(layer.weight)
            w[:, self.perm] = layer.weight
            layer, self.perm = Dense(w, layer.bias), None
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow is refused just below
                single = Network(self.shape, (layer,))
        except ModelError as exc:
            raise self.fail(node, str(exc)) from None
        if (part := nonfinite_part(single.layers[0])) is not None:
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
        if op == "Identity":
            return
        if op == "Relu":
            self.push(ReLU(), node)
        elif op in ("Add", "Sub", "Mul", "Div"):
            self.elementwise(node, op)
        elif op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            self.reshape(node, op)
        else:
            getattr(self, f"op_{op.lower()}")(node)

    def op_dropout(self, node: onnx.NodeProto) -> None:
        # run() has made sure that every input but the data is a constant
        if len(node.input) > 2 and node.input[2] and np.any(self.consts[node.input[2]]):
            raise self.fail(node, "Dropout in training mode is random; export the network in eval mode")

    def op_gemm(self, node: onnx.NodeProto) -> None:
        if self.attr(node, "transA", "int", 0):
            raise self.fail(node, "transA=1 is not supported")
        trans_b = self.attr(node, "transB", "int", 0)
        alpha, beta = self.attr(node, "alpha", "float", 1.0), self.attr(node, "beta", "float", 1.0)
        w = self.operand(node, 1, "weight")
        if w.ndim != 2:
            raise self.fail(node, f"the weight must be a matrix, got shape {w.shape}")
        w = (w if trans_b else w.T) * alpha
        bias = self.operand(node, 2, "bias", optional=True)
        if bias is None:
            bias = np.zeros(w.shape[0])
        elif bias.size not in (1, w.shape[0]) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
            raise self.fail(node, f"bias of shape {bias.shape} does not fit {w.shape[0]} outputs")
        self.dense(node, w, np.broadcast_to(bias.reshape(-1) * beta, (w.shape[0],)).copy())

    def op_matmul(self, node: onnx.NodeProto) -> None:
        w, first = self.const(node)
        if first or w.ndim != 2:
            raise self.fail(node, "only input @ constant-matrix is supported")
        self.dense(node, w.T, np.zeros(w.shape[1]))

    def elementwise(self, node: onnx.NodeProto, op: str) -> None:
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

    def op_batchnormalization(self, node: onnx.NodeProto) -> None:
        if len(self.shape) not in (1, 3):
            raise self.fail(node, f"batch-norm on shape {self.shape} is not supported")
        if self.attr(node, "training_mode", "int", 0) or any(node.output[1:]):
            raise self.fail(node, "batch-norm in training mode uses batch statistics; export in eval mode")
        if self.attr(node, "spatial", "int", 1) != 1:
            raise self.fail(node, "batch-norm with spatial=0 is not supported")
        g, b, mean, var = (self.operand(node, i, what) for i, what in
                           enumerate(("scale", "bias", "mean", "variance"), start=1))
        for v, what in ((g, "scale"), (b, "bias"), (mean, "mean"), (var, "variance")):
            if v.shape != (self.shape[0],):
                raise self.fail(node, f"{what} of shape {v.shape} does not fit {self.shape[0]} channels")
        eps = self.attr(node, "epsilon", "float", 1e-5)
        if np.any(var < 0) or np.any(var + eps <= 0):
            raise self.fail(node, f"variance {node.input[4]!r} is negative (or variance + epsilon is not positive)")
        s = g / np.sqrt(var + eps)
        extra = (1,) * (len(self.shape) - 1)
        self.push(ElementwiseAffine(np.broadcast_to(s.reshape(-1, *extra), self.shape).copy(),
                                    np.broadcast_to((b - mean * s).reshape(-1, *extra), self.shape).copy()), node)

    def check_pad_mode(self, node: onnx.NodeProto) -> None:
        if self.attr(node, "auto_pad", "string", "NOTSET") not in ("NOTSET", "VALID"):
            raise self.fail(node, "auto_pad is not supported; export with explicit pads")

    def op_conv(self, node: onnx.NodeProto) -> None:
        w = self.operand(node, 1, "weight")
        if w.ndim != 4:
            raise self.fail(node, f"only 2-D convolutions are supported (weight of shape {w.shape})")
        if self.attr(node, "group", "int", 1) != 1 or any(d != 1 for d in self.ints(node, "dilations", 2, [1, 1], 1)):
            raise self.fail(node, "grouped or dilated convolutions are not supported")
        self.check_pad_mode(node)
        kernel = self.ints(node, "kernel_shape", 2, list(w.shape[2:]), 1)
        if kernel != w.shape[2:]:
            raise self.fail(node, f"kernel_shape {list(kernel)} does not match the weight's {list(w.shape[2:])}")
        bias = self.operand(node, 2, "bias", optional=True)
        bias = np.zeros(w.shape[0]) if bias is None else bias
        if bias.shape != (w.shape[0],):
            raise self.fail(node, f"bias of shape {bias.shape} does not fit {w.shape[0]} output channels")
        pads = self.ints(node, "pads", 4, [0, 0, 0, 0], 0)
        self.push(Conv2d(w, bias, self.ints(node, "strides", 2, [1, 1], 1), pads), node)

    def op_averagepool(self, node: onnx.NodeProto) -> None:
        self.check_pad_mode(node)
        k = self.ints(node, "kernel_shape", 2, None, 1)
        s = self.ints(node, "strides", 2, list(k), 1)
        if any(self.ints(node, "pads", 4, [0, 0, 0, 0], 0)):
            raise self.fail(node, "padded average pooling is not supported")
        if any(d != 1 for d in self.ints(node, "dilations", 2, [1, 1], 1)):
            raise self.fail(node, "dilated average pooling is not supported")
        if len(self.shape) != 3:
            raise self.fail(node, f"expects a (C, H, W) input, gets {self.shape}")
        partial = any((n - kk) % ss for n, kk, ss in zip(self.shape[1:], k, s, strict=True))
        if self.attr(node, "ceil_mode", "int", 0) and partial:
            # ceil mode adds partial windows at the border (averaged over fewer pixels): not an AvgPool2d.
            raise self.fail(node, f"ceil_mode=1 adds partial windows on input {self.shape} (kernel {list(k)}, "
                                  f"strides {list(s)}); vfnn supports floor mode only")
        self.push(AvgPool2d(k, s), node)

    def op_transpose(self, node: onnx.NodeProto) -> None:
        perm = self.attr(node, "perm", "ints", [])
        if sorted(perm) != list(range(len(self.shape) + 1)) or perm[0] != 0:
            raise self.fail(node, f"perm {perm} is not a permutation of the {len(self.shape) + 1} axes that keeps "
                                  "the batch axis first")
        sample_perm = [p - 1 for p in perm[1:]]
        idx = np.arange(int(np.prod(self.shape))).reshape(self.shape).transpose(sample_perm).reshape(-1)
        if not np.array_equal(idx, np.arange(idx.size)):
            self.perm = idx if self.perm is None else self.perm[idx]
        self.shape = tuple(self.shape[p] for p in sample_perm)

    def reshape(self, node: onnx.NodeProto, op: str) -> None:
        if op == "Flatten":
            if self.attr(node, "axis", "int", 1) != 1:
                raise self.fail(node, "only Flatten(axis=1) is supported")
            target: tuple[int, ...] = (int(np.prod(self.shape)),)
        elif op == "Reshape":
            target = self.reshape_target(node)
        else:
            target = self.squeeze_target(node, op)
        if len(target) == 1:
            self.push(Flatten(), node)
        elif self.layers and isinstance(self.layers[-1], Flatten) or all(
            d == 1 for d in target[:-1]) or target == self.shape:
            # A reshape to a rank the network does not use for computation: keep the data order.
            self.shape = target
        else:
            raise self.fail(node, f"reshape from {self.shape} to {target} is not a flatten")

    def reshape_target(self, node: onnx.NodeProto) -> tuple[int, ...]:
        """The sample shape a Reshape produces (batch 1), with ONNX's 0 (copy) and -1 (infer) resolved."""
        n, full = int(np.prod(self.shape)), (1, *self.shape)
        spec = [int(s) for s in self.operand(node, 1, "shape", kind="int").reshape(-1)]
        if self.attr(node, "allowzero", "int", 0) and 0 in spec:
            raise self.fail(node, "allowzero=1 with a 0 in the shape makes an empty tensor")
        bad_zero = any(s == 0 and i >= len(full) for i, s in enumerate(spec))
        if bad_zero or spec.count(-1) > 1 or min(spec, default=0) < -1:
            raise self.fail(node, f"invalid reshape target {spec} for shape {self.shape}")
        spec = [full[i] if s == 0 else s for i, s in enumerate(spec)]
        known = int(np.prod([s for s in spec if s != -1]))
        if -1 in spec and known > 0 and n % known == 0:
            spec[spec.index(-1)] = n // known
        if int(np.prod(spec)) != n or -1 in spec:
            raise self.fail(node, f"cannot reshape {self.shape} to {spec}")
        if len(spec) == 1:
            return (n,)
        if spec[0] != 1:
            raise self.fail(node, f"reshape to {spec} changes the batch axis")
        return tuple(spec[1:])

    def squeeze_target(self, node: onnx.NodeProto, op: str) -> tuple[int, ...]:
        """Squeeze/Unsqueeze: only dimensions of size 1 move, the data order stays."""
        axes = self.attr(node, "axes", "ints", None)
        if axes is None:
            given = self.operand(node, 1, "axes", kind="int", optional=True)
            axes = [] if given is None else [int(v) for v in given.reshape(-1)]
        full = [1, *self.shape]
        rank = len(full) + (len(axes) if op == "Unsqueeze" else 0)
        if any(not -rank <= x < rank for x in axes) or len({x % rank for x in axes}) != len(axes):
            raise self.fail(node, f"axes {axes} are invalid for rank {rank}")
        axes = [x % rank for x in axes]
        if op == "Squeeze":
            axes = axes or [i for i, d in enumerate(full) if d == 1 and i]
            if 0 in axes:
                raise self.fail(node, "squeezing the batch axis is not supported")
            if any(full[x] != 1 for x in axes):
                raise self.fail(node, f"cannot squeeze axes {axes} of shape {tuple(full)}: they are not of size 1")
            return tuple(d for i, d in enumerate(full) if i not in axes)[1:]
        if 0 in axes:
            raise self.fail(node, "unsqueezing in front of the batch axis is not supported")
        for ax in sorted(axes):
            full.insert(ax, 1)
        return tuple(full[1:])


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
