"""Fuzzing the command line with mutated real files: a crash must never read as a verdict.

Hypothesis mutates the ACAS Xu networks and properties in ../shared and small networks written by
vfnn's own export (ONNX: attributes, initializers, inputs, outputs, graph, bytes; VNN-LIB: tokens,
numbers, names, bytes), and the results.jsonl and instances.csv of a real `vfnn bench` run. Every
command (verify, stats, bench, gate, report) runs in-process through ``vfnn.cli.main`` and must:

- never print a traceback, and never report an internal error (exit 5 from vfnn itself);
- exit with one of its documented codes, where 1 is only a verdict: a replayed counterexample
  (`verify` sat), a failed threshold (`gate`), a disagreement (`report`);
- say a user error (exit 2) in one line starting ``vfnn: error:``.

Examples are derandomised so that CI runs the same cases every time (about 40 s on 2 cores).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from vfnn.cli import main
from vfnn.errors import ModelError
from vfnn.network import AvgPool2d, Conv2d, Dense, Flatten, Network, ReLU
from vfnn.onnx_io import network_from_onnx, save_onnx, supported_ops
from vfnn.spec import robustness_spec
from vfnn.vnnlib import write_vnnlib

ACASXU = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu"

EXIT_CODES = {"verify": {0, 1, 2, 3, 4, 5}, "stats": {0, 2}, "bench": {0, 2}, "gate": {0, 1, 2}, "report": {0, 1, 2}}
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

pytestmark = pytest.mark.skipif(not ACASXU.is_dir(), reason=f"ACAS Xu benchmark not found at {ACASXU}")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``vfnn ARGS`` in-process, checked against the exit-code contract; returns (code, stdout, stderr)."""
    code, out, err = run_cli(args, capsys)
    command = args[0]
    context = f"vfnn {' '.join(args)} -> {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in out + err, context
    assert "internal error" not in err, context
    assert code in EXIT_CODES[command], context
    if code == 1:
        verdict = {"verify": out.startswith("sat ["), "gate": "gate: FAILED" in out,
                   "report": "disagreement" in err}[command]
        assert verdict, context
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vfnn: error: "), context
    if command == "verify" and code == 5:
        assert out.startswith("error ["), context  # the verifier's own error, reported as a result
    return code, out, err


# --- the real files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    fc = Network((4,), (Dense(rng.normal(size=(6, 4)), rng.normal(size=6)), ReLU(),
                        Dense(rng.normal(size=(3, 6)), rng.normal(size=3))), "fc")
    conv = Network((1, 5, 5), (Conv2d(rng.normal(size=(2, 1, 2, 2)), rng.normal(size=2), (1, 1), (0, 0, 0, 0)),
                               ReLU(), AvgPool2d((2, 2), (2, 2)), Flatten(), Dense(rng.normal(size=(3, 8)),
                                                                                  np.zeros(3))), "conv")
    acas = root / "acas.onnx"
    shutil.copy(ACASXU / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx", acas)
    nets = {"fc": save_onnx(fc, root / "fc.onnx"), "conv": save_onnx(conv, root / "conv.onnx"), "acas": acas}
    specs = {"fc": write_vnnlib(robustness_spec(np.full(4, 0.5), 0, 0.05, 3), root / "fc.vnnlib"),
             "conv": write_vnnlib(robustness_spec(np.full(25, 0.5), 1, 0.05, 3), root / "conv.vnnlib"),
             "acas": write_vnnlib(robustness_spec(np.array([0.1, 0.0, 0.0, 0.3, 0.3]), 0, 0.001, 5),
                                  root / "acas_box.vnnlib")}
    props = {p: (ACASXU / "vnnlib" / f"{p}.vnnlib").read_text() for p in ("prop_1", "prop_2", "prop_3", "prop_4")}
    return Files(root=root, nets=nets, specs=specs, props=props)


class Files(dict):
    """The fixture's files; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"Files({self['root']})"


# --- ONNX mutations: each takes the model and hypothesis' draw and changes the model in place

ATTRS = ("alpha", "beta", "transA", "transB", "kernel_shape", "strides", "pads", "ceil_mode", "axis", "axes", "perm",
         "epsilon", "group", "dilations", "auto_pad", "value", "value_float", "value_ints", "training_mode")
ATTR_VALUES = st.one_of(st.integers(-2, 3), st.sampled_from([0.5, -1.0, float("nan"), float("inf"), 1e30]),
                        st.lists(st.integers(-1, 3), max_size=5), st.lists(st.floats(allow_nan=True), max_size=3),
                        st.sampled_from(["SAME_UPPER", "VALID", "x"]),
                        st.builds(lambda v: helper.make_tensor("t", TensorProto.FLOAT, [len(v)], v),
                                  st.lists(st.floats(-2, 2), max_size=4)))
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 1e38, 0.0, -0.0, 1e-45]


def _node(m: onnx.ModelProto, draw) -> onnx.NodeProto | None:
    nodes = m.graph.node
    return nodes[draw(st.integers(0, len(nodes) - 1))] if len(nodes) else None


def mut_set_attr(m, draw) -> None:
    if (node := _node(m, draw)) is not None:
        name = draw(st.sampled_from(ATTRS))
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        value = draw(ATTR_VALUES)
        kind = onnx.AttributeProto.INTS if isinstance(value, list) and not value else None
        node.attribute.extend([*keep, helper.make_attribute(name, value, attr_type=kind)])


def mut_drop_attr(m, draw) -> None:
    if (node := _node(m, draw)) is not None and len(node.attribute):
        del node.attribute[draw(st.integers(0, len(node.attribute) - 1))]


def mut_initializer(m, draw) -> None:
    inits = m.graph.initializer
    if not len(inits):
        return
    t = inits[draw(st.integers(0, len(inits) - 1))]
    how = draw(st.sampled_from(["truncate", "extend", "special", "dims", "dtype", "drop"]))
    if how == "drop":
        inits.remove(t)
        return
    raw = t.raw_data or onnx.numpy_helper.to_array(t).tobytes()
    t.ClearField("float_data")
    if how == "truncate":
        t.raw_data = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "extend":
        t.raw_data = raw + draw(st.binary(min_size=1, max_size=16))
    elif how == "special":
        a = np.frombuffer(raw, np.float32).copy() if t.data_type == TensorProto.FLOAT else None
        if a is not None and a.size:
            a[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))
            t.raw_data = a.tobytes()
    elif how == "dims":
        dims = list(t.dims)
        del t.dims[:]
        t.dims.extend(draw(st.sampled_from([dims + [1], dims[1:], [1, *dims], [d + 1 for d in dims], []])))
    else:
        t.raw_data = raw
        t.data_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT16,
                                            TensorProto.STRING, TensorProto.BOOL]))


def mut_inputs(m, draw) -> None:
    if (node := _node(m, draw)) is None:
        return
    names = list(node.input)
    how = draw(st.sampled_from(["drop", "ghost", "rename", "swap", "extra"]))
    if how == "drop" and names:
        names.pop()
    elif how == "ghost":
        names.append("ghost")
    elif how == "rename" and names:
        names[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(["ghost", "", "input", "x"]))
    elif how == "swap" and len(names) > 1:
        names[0], names[1] = names[1], names[0]
    elif how == "extra":
        names.append(names[0] if names else "")
    del node.input[:]
    node.input.extend(names)


def mut_outputs(m, draw) -> None:
    if (node := _node(m, draw)) is not None:
        new = draw(st.sampled_from([[], [""], ["other"], [*node.output, "second"]]))
        del node.output[:]
        node.output.extend(new)


def mut_op_type(m, draw) -> None:
    if (node := _node(m, draw)) is not None:
        node.op_type = draw(st.sampled_from([*supported_ops(), "Sigmoid", "MaxPool", "Concat"]))
        if draw(st.booleans()):
            node.domain = draw(st.sampled_from(["", "com.example", "ai.onnx"]))


def mut_constant(m, draw) -> None:
    """Turn an initializer into a Constant node with some value attribute (valid or not)."""
    inits = m.graph.initializer
    if not len(inits):
        return
    t = inits[draw(st.integers(0, len(inits) - 1))]
    a = onnx.numpy_helper.to_array(t).reshape(-1)
    value = draw(st.sampled_from(["value", "value_floats", "value_float", "value_ints", "value_int", "none"]))
    kw = {"value": t, "value_floats": [float(v) for v in a], "value_float": float(a[0]) if a.size else 0.0,
          "value_ints": [int(v) for v in np.nan_to_num(a)], "value_int": 1}.get(value, None)
    node = helper.make_node("Constant", [], [t.name], **({} if kw is None else {value: kw}))
    inits.remove(t)
    m.graph.node.insert(0, node)


def mut_graph(m, draw) -> None:
    g = m.graph
    how = draw(st.sampled_from(["drop_node", "dup_node", "reverse", "no_output", "two_outputs", "input_dims",
                                "input_type", "no_shape", "opset"]))
    if how == "drop_node" and len(g.node):
        del g.node[draw(st.integers(0, len(g.node) - 1))]
    elif how == "dup_node" and len(g.node):
        g.node.append(g.node[draw(st.integers(0, len(g.node) - 1))])
    elif how == "reverse":
        nodes = list(g.node)[::-1]
        del g.node[:]
        g.node.extend(nodes)
    elif how == "no_output":
        del g.output[:]
    elif how == "two_outputs":
        g.output.append(g.output[0] if len(g.output) else helper.make_tensor_value_info("z", 1, [1]))
    elif how in ("input_dims", "input_type", "no_shape") and len(g.input):
        t = g.input[-1].type.tensor_type
        if how == "input_type":
            t.elem_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64, TensorProto.UNDEFINED]))
        elif how == "no_shape":
            t.ClearField("shape")
        elif len(t.shape.dim):
            d = t.shape.dim[draw(st.integers(0, len(t.shape.dim) - 1))]
            v = draw(st.sampled_from(["N", 0, 7, -1]))
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v
    elif how == "opset":
        m.opset_import[0].version = draw(st.sampled_from([1, 7, 9, 11, 13, 17, 21, 99]))


ONNX_MUTATIONS = [mut_set_attr, mut_drop_attr, mut_initializer, mut_inputs, mut_outputs, mut_op_type,
                  mut_constant, mut_graph]


def mutate_bytes(data: bytes, draw) -> bytes:
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data)))]
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


@settings(FUZZ, max_examples=70)
@given(data=st.data())
def test_mutated_onnx(files: dict, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["fc", "conv", "acas"]), label="net")
    model = onnx.load(str(files["nets"][which]))
    for mutation in data.draw(st.lists(st.sampled_from(ONNX_MUTATIONS), min_size=1, max_size=3), label="mutations"):
        try:
            mutation(model, data.draw)
        except (ValueError, TypeError):  # a mutation that cannot apply to an earlier mutation's result
            pass
    try:
        raw = model.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refuses some mutations (e.g. unset required types)
        raw = files["nets"][which].read_bytes()
    if data.draw(st.integers(0, 9), label="byte-level") == 0:
        raw = mutate_bytes(raw, data.draw)
    else:  # the importer's own checks, without onnx.checker in front: a ModelError or a network, nothing else
        try:
            network_from_onnx(model, check=False)
        except ModelError:
            pass
    path = files["root"] / f"mutated_{which}.onnx"
    path.write_bytes(raw)
    spec = str(files["specs"][which])
    code, _, _ = run(["stats", "--bounds", "ibp", str(path), spec], capsys)
    if code == 0 or data.draw(st.booleans(), label="verify anyway"):
        run(["verify", "-t", "1", "--bounds", "none", str(path), spec], capsys)


# --- VNN-LIB mutations, at the token level and the byte level

TOKEN = re.compile(r"\(|\)|[^\s()]+")
NUMBERS = ["nan", "inf", "-inf", "1e400", "-1e400", "1e-400", "0x10", "1/2", "-0", "1e", "--1", "+1", "", "1.5.2"]
WORDS = ["<=", ">=", "<", ">", "=", "and", "or", "assert", "declare-const", "Real", "Int", "X_99", "Y_9", "X_-1",
         "X_0", "Y_0", "foo", "(", ")", "+", "-", "*", ";"]


def mutate_vnnlib(text: str, draw) -> bytes:
    tokens = TOKEN.findall(re.sub(r";[^\n]*", "", text))  # comments would swallow the rejoined line
    for _ in range(draw(st.integers(1, 3), label="edits")):
        i = draw(st.integers(0, len(tokens) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "word", "truncate"]))
        if how == "delete":
            del tokens[i]
        elif how == "duplicate":
            tokens.insert(i, tokens[i])
        elif how == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif how == "number":
            nums = [k for k, t in enumerate(tokens) if re.fullmatch(r"[-+0-9.eE]+", t)]
            if nums:
                tokens[nums[i % len(nums)]] = draw(st.sampled_from(NUMBERS))
        elif how == "word":
            tokens[i] = draw(st.sampled_from(WORDS))
        else:
            tokens = tokens[:i]
        if not tokens:
            break
    raw = " ".join(tokens).encode()
    extra = draw(st.sampled_from(["none", "none", "bom", "latin1", "nul", "empty"]), label="bytes")
    return {"none": raw, "bom": b"\xef\xbb\xbf" + raw, "latin1": raw + b"\n; caf\xe9\n", "nul": raw + b"\x00",
            "empty": b""}[extra]


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_mutated_vnnlib(files: dict, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    prop = data.draw(st.sampled_from(["prop_1", "prop_2", "prop_3", "prop_4", "fc"]), label="spec")
    if prop == "fc":
        net, text = files["nets"]["fc"], files["specs"]["fc"].read_text()
    else:
        net, text = files["nets"]["acas"], files["props"][prop]
    path = files["root"] / "mutated.vnnlib"
    path.write_bytes(mutate_vnnlib(text, data.draw))
    code, _, _ = run(["stats", "--bounds", "ibp", str(net), str(path)], capsys)
    if code == 0 or data.draw(st.booleans(), label="verify anyway"):
        run(["verify", "-t", "0.5" if prop != "fc" else "1", "--bounds", "none", str(net), str(path)], capsys)


# --- campaign files: a real bench run, then mutated results.jsonl (gate, report) and instances.csv (bench)


@pytest.fixture(scope="module")
def campaign(files: dict) -> dict:
    root = files["root"] / "campaign"
    root.mkdir()
    csv = root / "instances.csv"
    csv.write_text("".join(f"{files['nets'][k]},{files['specs'][k]},5\n" for k in ("fc", "conv", "acas")))
    try:
        main(["bench", str(csv), "-v", "milp", "--jobs", "1", "-q", "--out", str(root / "out")])
    except SystemExit as exc:
        assert exc.code in (0, None)
    results = root / "out" / "results.jsonl"
    assert len(results.read_text().splitlines()) == 3
    return {"root": root, "csv": csv, "results": results}


JSON_VALUES = st.sampled_from([None, 1, -1, 0.5, "x", "", [], {}, True, float("nan"), [1, "a"], {"a": 1}])


def _mutate_json(obj, draw, depth: int = 0):
    """Delete, retype or replace one value somewhere inside ``obj``."""
    if isinstance(obj, dict) and obj:
        key = draw(st.sampled_from(sorted(obj)))
        how = draw(st.sampled_from(["delete", "replace", "descend", "descend"]))
        if how == "delete":
            del obj[key]
        elif how == "replace" or depth > 3:
            obj[key] = draw(JSON_VALUES)
        else:
            obj[key] = _mutate_json(obj[key], draw, depth + 1)
        return obj
    if isinstance(obj, list) and obj:
        i = draw(st.integers(0, len(obj) - 1))
        obj[i] = _mutate_json(obj[i], draw, depth + 1)
        return obj
    return draw(JSON_VALUES)


def mutate_results(lines: list[str], draw) -> bytes:
    lines = list(lines)
    i = draw(st.integers(0, len(lines) - 1))
    how = draw(st.sampled_from(["json", "json", "json", "duplicate", "truncate", "garbage", "latin1", "blank"]))
    if how == "json":
        lines[i] = json.dumps(_mutate_json(json.loads(lines[i]), draw))
    elif how == "duplicate":
        lines.insert(i, lines[i])
    elif how == "truncate":
        lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    elif how == "garbage":
        lines.insert(i, draw(st.sampled_from(["[]", "null", "42", '"s"', "{", "{}"])))
    elif how == "blank":
        lines.insert(i, "   ")
    raw = ("\n".join(lines) + "\n").encode()
    return raw.replace(b"milp", b"m\xe9lp", 1) if how == "latin1" else raw


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_mutated_results(campaign: dict, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    path = campaign["root"] / "mutated.jsonl"
    path.write_bytes(mutate_results(campaign["results"].read_text().splitlines(), data.draw))
    th = data.draw(st.sampled_from([["--min-verified", "0.5"], ["--max-timeouts", "0"], ["--max-errors", "0"],
                                    ["--max-mean-time", "10"]]), label="threshold")
    extra = ["--instances", str(campaign["csv"])] if data.draw(st.booleans(), label="with instances") else []
    run(["gate", str(path), *th, *extra], capsys)
    run(["report", str(path), "--no-replay"], capsys)


INSTANCES_EDITS = [
    lambda rows: rows[:1] + [rows[1].rsplit(",", 1)[0]],  # 2 columns
    lambda rows: [r.rsplit(",", 1)[0] + ",abc" for r in rows],  # timeout not a number
    lambda rows: [r.replace("fc.onnx", "missing.onnx") for r in rows],  # a model that is not there
    lambda rows: rows + ["\x00,\x00,\x00"],
]


@pytest.mark.parametrize("edit", [0, 1, 2, 3])
def test_broken_instances_file(edit: int, campaign: dict, capsys: pytest.CaptureFixture[str]) -> None:
    rows = campaign["csv"].read_text().splitlines()
    csv = campaign["root"] / f"broken{edit}" / "instances.csv"
    csv.parent.mkdir()
    csv.write_text("\n".join(INSTANCES_EDITS[edit](rows)) + "\n")
    run(["bench", str(csv), "-v", "milp", "--jobs", "1", "-q", "--timeout", "1", "--out", str(csv.parent / "out")],
        capsys)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8 \xe9\n", b"", b"onnx,vnnlib,timeout\n"])
def test_unreadable_instances_file(content: bytes, campaign: dict, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "instances.csv"
    csv.write_bytes(content)
    code, _, _ = run(["bench", str(csv), "-v", "milp", "-q", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
