"""VNN-LIB reader/writer: exact round-trips, every malformed input a located SpecError, ACAS Xu contents."""

from __future__ import annotations

import gzip
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vfnn.errors import SpecError
from vfnn.spec import Halfspaces, Spec, SpecCase, robustness_spec
from vfnn.vnnlib import MAX_DISJUNCTS, read_vnnlib, write_vnnlib

SPECS = Path(__file__).resolve().parents[1] / "specs"
HYP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def parse(tmp_path: Path, text: str, name: str = "t.vnnlib", **kw) -> Spec:
    p = tmp_path / name
    p.write_text(text)
    return read_vnnlib(p, **kw)


def decls(nx: int, ny: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(nx)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(ny)
    )


def unit_box(nx: int) -> str:
    return "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 1.0))\n" for i in range(nx))


def assert_same(a: Spec, b: Spec) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases, strict=True):
        assert np.array_equal(ca.lower, cb.lower) and np.array_equal(ca.upper, cb.upper)
        assert len(ca.unsafe) == len(cb.unsafe)
        for ha, hb in zip(ca.unsafe, cb.unsafe, strict=True):
            assert np.array_equal(ha.A, hb.A) and np.array_equal(ha.b, hb.b)


def le(i: int, j: int, n: int = 5) -> tuple[list[float], float]:
    """The row of Y_i <= Y_j, i.e. Y_i - Y_j <= 0."""
    row = [0.0] * n
    row[i], row[j] = 1.0, -1.0
    return row, 0.0


def expect(spec: Spec, boxes: list, unsafe: list) -> None:
    """``boxes[k] = (lower, upper)``; ``unsafe[k]`` = list of disjuncts, each a list of (row, b)."""
    assert len(spec.cases) == len(boxes)
    for case, (lo, hi), dis in zip(spec.cases, boxes, unsafe, strict=True):
        assert np.array_equal(case.lower, lo) and np.array_equal(case.upper, hi)
        assert len(case.unsafe) == len(dis)
        for h, rows in zip(case.unsafe, dis, strict=True):
            assert np.array_equal(h.A, [r for r, _ in rows]) and np.array_equal(h.b, [b for _, b in rows])


# ---------------------------------------------------------------- ACAS Xu

BOX_12 = ([0.6, -0.5, -0.5, 0.45, -0.5], [0.679857769, 0.5, 0.5, 0.5, -0.45])
BOX_34 = ([-0.303531156, -0.009549297], [-0.298552812, 0.009549297])
ACAS = {
    "prop_1": ([BOX_12], [[[([-1.0, 0, 0, 0, 0], -3.991125645861615)]]]),
    "prop_2": ([BOX_12], [[[le(j, 0) for j in (1, 2, 3, 4)]]]),  # "Y_0 largest": one disjunct of four rows
    "prop_3": (
        [(BOX_34[0] + [0.493380324, 0.3, 0.3], BOX_34[1] + [0.5, 0.5, 0.5])],
        [[[le(0, j) for j in (1, 2, 3, 4)]]],
    ),
    "prop_4": (
        [(BOX_34[0] + [0.0, 0.318181818, 0.083333333], BOX_34[1] + [0.0, 0.5, 0.166666667])],
        [[[le(0, j) for j in (1, 2, 3, 4)]]],
    ),
    "prop_5": (
        [(
            [-0.324274257, 0.031830989, -0.499999896, -0.5, -0.5],
            [-0.321785085, 0.063661977, -0.499204121, -0.227272727, -0.166666667],
        )],
        [[[le(j, 4)] for j in (0, 1, 2, 3)]],
    ),
    "prop_6": (
        [
            (
                [-0.129289109, 0.11140846, -0.499999896, -0.5, -0.5],
                [0.700434925, 0.499999896, -0.499204121, 0.5, 0.5],
            ),
            (
                [-0.129289109, -0.499999896, -0.499999896, -0.5, -0.5],
                [0.700434925, -0.11140846, -0.499204121, 0.5, 0.5],
            ),
        ],
        [[[le(j, 0)] for j in (1, 2, 3, 4)]] * 2,
    ),
    "prop_7": (
        [(
            [-0.328422877, -0.499999896, -0.499999896, -0.5, -0.5],
            [0.679857769, 0.499999896, 0.499999896, 0.5, 0.5],
        )],
        [[[le(3, k) for k in (0, 1, 2)], [le(4, k) for k in (0, 1, 2)]]],
    ),
    "prop_8": (
        [(
            [-0.328422877, -0.499999896, -0.015915494, -0.045454545, 0.0],
            [0.679857769, -0.374999922, 0.015915494, 0.5, 0.5],
        )],
        [[[le(j, 0), le(j, 1)] for j in (2, 3, 4)]],
    ),
    "prop_9": (
        [(
            [-0.295233916, -0.063661977, -0.499999896, -0.5, -0.5],
            [-0.212261512, -0.022281692, -0.498408347, -0.454545455, -0.375],
        )],
        [[[le(j, 3)] for j in (0, 1, 2, 4)]],
    ),
    "prop_10": (
        [(
            [0.268978427, 0.11140846, -0.499999896, 0.227272727, 0.0],
            [0.679857769, 0.499999896, -0.498408347, 0.5, 0.5],
        )],
        [[[le(j, 0)] for j in (1, 2, 3, 4)]],
    ),
}


@pytest.mark.parametrize("prop", sorted(ACAS))
def test_acasxu_properties_parse_to_their_stated_boxes_and_constraints(acasxu: Path, prop: str) -> None:
    spec = read_vnnlib(acasxu / "vnnlib" / f"{prop}.vnnlib", n_inputs=5, n_outputs=5)
    assert spec.name == prop
    expect(spec, *ACAS[prop])


def test_acasxu_counterexamples_violate_exactly_their_property(acasxu: Path) -> None:
    specs = {p: read_vnnlib(acasxu / "vnnlib" / f"{p}.vnnlib") for p in ACAS}
    files = sorted((acasxu / "counterexamples").glob("*.counterexample"))
    assert files
    for f in files:
        vals = {(k, int(i)): float(v) for k, i, v in re.findall(r"\(([XY])_(\d+)\s+([^\s)]+)\)", f.read_text())}
        x, y = (np.array([vals[k, i] for i in range(5)]) for k in "XY")
        prop = re.search(r"(prop_\d+)", f.name)[1]
        assert specs[prop].find_violation(x, y, tol=1e-6) is not None, f.name
        assert specs["prop_1"].find_violation(x, y, tol=1e-6) is None  # prop_1 is unsat on every network


def test_gzip_input_is_read(acasxu: Path, tmp_path: Path) -> None:
    gz = tmp_path / "prop_6.vnnlib.gz"
    gz.write_bytes(gzip.compress((acasxu / "vnnlib" / "prop_6.vnnlib").read_bytes()))
    spec = read_vnnlib(gz)
    assert spec.name == "prop_6"
    expect(spec, *ACAS["prop_6"])


# ---------------------------------------------------------------- grammar features


def test_numbers_comments_arithmetic_and_equalities(tmp_path: Path) -> None:
    text = decls(4, 3) + (
        "; a comment (with parens\n"
        "(assert (>= X_0 .5)) (assert (<= X_0 1e-0)) ; trailing comment )\n"
        "(assert (<= (* 2 X_1) 1)) (assert (>= (* X_1 -4.0) -3))\n"  # X_1 <= 0.5, X_1 <= 0.75
        "(assert (>= (- X_1) 0.25))\n"  # X_1 <= -0.25 ... tightest upper
        "(assert (>= X_1 (- 1 2 0.5)))\n"  # X_1 >= -1.5
        "(assert (= X_2 -0.5)) (assert (== (+ X_3 1) 1.25))\n"
        "(assert (< 1 2))\n"  # constant true: ignored
        "(assert (or (and (> Y_0 (+ Y_1 (* 0.5 Y_2))) (<= Y_2 1E-3)) (>= (- Y_0 Y_1 Y_2) +2)))\n"
    )
    spec = parse(tmp_path, text)
    expect(
        spec,
        [([0.5, -1.5, -0.5, 0.25], [1.0, -0.25, -0.5, 0.25])],
        [[[([-1.0, 1.0, 0.5], 0.0), ([0, 0, 1.0], 1e-3)], [([-1.0, 1.0, 1.0], -2.0)]]],
    )


def test_nested_and_or_expand_to_dnf_and_mixed_disjuncts_become_cases(tmp_path: Path) -> None:
    text = decls(1, 2) + (
        "(assert (<= X_0 1)) (assert (>= X_0 -1))\n"
        "(assert (and (or (<= Y_0 0) (<= Y_1 0)) (or (and (>= X_0 0) (<= Y_0 5)) (<= X_0 0))))\n"
    )
    spec = parse(tmp_path, text)
    assert [(c.lower.tolist(), c.upper.tolist()) for c in spec.cases] == [([0.0], [1.0]), ([-1.0], [0.0])]
    first, second = spec.cases
    assert [h.A.tolist() for h in first.unsafe] == [[[1, 0], [1, 0]], [[0, 1], [1, 0]]]
    assert [h.b.tolist() for h in first.unsafe] == [[0, 5], [0, 5]]
    assert [h.A.tolist() for h in second.unsafe] == [[[1, 0]], [[0, 1]]]


def test_no_output_constraint_means_every_output_is_unsafe(tmp_path: Path) -> None:
    spec = parse(tmp_path, decls(2, 2) + unit_box(2) + "(check-sat)\n")
    (h,) = spec.cases[0].unsafe
    assert h.A.shape == (0, 2) and spec.find_violation(np.zeros(2), np.array([1e9, -1e9])) == 0


def test_declare_fun_and_constant_false_disjuncts(tmp_path: Path) -> None:
    text = "(declare-fun X_0 () Real) (declare-fun Y_0 () Real)\n" + unit_box(1)
    spec = parse(tmp_path, text + "(assert (or (and (<= Y_0 0) (> 0 1)) (>= Y_0 3)))")
    expect(spec, [([0.0], [1.0])], [[[([-1.0], -3.0)]]])


def test_declared_sizes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="declares 2 inputs, expected 3"):
        parse(tmp_path, decls(2, 1) + unit_box(2), n_inputs=3)
    with pytest.raises(SpecError, match="declares 1 outputs, expected 10"):
        parse(tmp_path, decls(2, 1) + unit_box(2), n_outputs=10)


# ---------------------------------------------------------------- errors with positions

BAD = [
    ("", r"t\.vnnlib:1:1: empty file"),
    ("; only a comment\n", r":1:1: empty file"),
    (decls(1, 1) + "(assert (<= X_0 1)\n", r":3:1: this '\(' is never closed"),
    (decls(1, 1) + "(assert (<= X_0 1)))\n", r":3:20: unbalanced '\)'"),
    (decls(1, 1) + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (foo Y_0 1))", r":3:50: unknown operator 'foo'"),
    (decls(1, 1) + unit_box(1) + "(assert (<= (^ Y_0 2) 1))", r":5:14: unknown arithmetic operator '\^'"),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_3 1))", r":5:13: undeclared variable 'Y_3'"),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_0 1.2.3))", r":5:17: expected a number or a declared variable"),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_0 1e999))", r":5:17: number '1e999' is out of range"),
    (decls(1, 2) + unit_box(1) + "(assert (<= (* Y_0 Y_1) 1))", r":6:14: non-linear term"),
    (decls(1, 1) + unit_box(1) + "(assert (<= (/ Y_0 0) 1))", r":5:14: '/' must divide by non-zero"),
    (decls(1, 1) + unit_box(1) + "(assert (not (<= Y_0 1)))", r":5:10: unknown operator 'not'.*not supported"),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_0))", r":5:10: '<=' needs at least two arguments"),
    (decls(1, 1) + unit_box(1) + "(assert (or))", r":5:10: 'or' needs at least one argument"),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_0 1) (<= Y_0 2))", r":5:1: assert takes exactly one formula"),
    (decls(1, 1) + unit_box(1) + "(assert Y_0)", r":5:9: expected a formula in parentheses, got 'Y_0'"),
    (decls(1, 1) + unit_box(1) + "(assert ((<= Y_0 1)))", r":5:9: expected a formula, got a list without an operator"),
    (decls(1, 1) + unit_box(1) + "(assert ((<= Y_0 1) Y_0 1))", r":5:9: expected a formula, got a list without"),
    (decls(1, 1) + unit_box(1) + "(push 1)", r":5:2: unknown command 'push'"),
    (decls(1, 1) + unit_box(1) + "(assert (<= 1 0))", r":5:1: this assert can never hold"),
    (decls(2, 1) + unit_box(2) + "(assert (<= (+ X_0 X_1) 1))", r":8:9: constraint on inputs is not a simple bound"),
    (decls(1, 1) + unit_box(1) + "(assert (<= X_0 Y_0))", r":5:9: constraint on inputs is not a simple bound"),
    (decls(2, 1) + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1))", r":2:16: X_1 has no lower bound"),
    (decls(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (<= X_0 2)))", r":1:16: X_0 has no lower bound in some"),
    (decls(1, 1) + "(assert (<= (* 1e-300 X_0) 1e300)) (assert (>= X_0 0))", r":1:16: X_0 has no upper bound"),
    (decls(1, 1) + "(assert (<= X_0 0)) (assert (>= X_0 1))", r":3:29: empty input box: X_0 has lower"),
    ("(declare-const X_0 Real) (declare-const X_2 Real) (declare-const Y_0 Real)", r":1:41: X_1 is not declared"),
    ("(declare-const X_0 Real) (declare-const X_2 Real) (declare-const Y_0 Real) (assert (<= (+ X_2 Y_0) 1))",
     r":1:41: X_1 is not declared"),
    ("(declare-const X_0 Real) (declare-const X_0 Real)", r":1:41: X_0 is declared twice"),
    ("(declare-const X_0 Int)", r":1:20: variable X_0 has type 'Int', expected Real"),
    ("(declare-const X_01 Real)", r":1:16: unsupported variable name 'X_01'"),
    ("(declare-const input Real)", r":1:16: unsupported variable name 'input'"),
    ("(declare-const X_0)", r":1:1: malformed declare-const"),
    ("(declare-const Y_0 Real) (assert (<= Y_0 1))", r"t\.vnnlib: no input variables"),
    (decls(1, 0) + unit_box(1), r"t\.vnnlib: no output variables"),
    (decls(1, 1) + unit_box(1) + "(assert " * 3000 + ")" * 3000, r"t\.vnnlib:\d+:\d+: "),
    (decls(1, 1) + unit_box(1) + "(assert (<= Y_0 " + "(+ " * 3000 + "1" + ")" * 3002, r"nested too deeply"),
]


@pytest.mark.parametrize("text,pattern", BAD)
def test_malformed_files_raise_located_spec_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern):
        parse(tmp_path, text)


def test_dnf_blow_up_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    ors = "".join(f"(assert (or {' '.join(f'(<= Y_0 {k})' for k in range(20))}))\n" for _ in range(5))
    with pytest.raises(SpecError, match=rf":\d+:1: .*over {MAX_DISJUNCTS} disjuncts"):
        parse(tmp_path, decls(1, 1) + unit_box(1) + ors)


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    (tmp_path / "bin.vnnlib").write_bytes(b"\xff\xfe(\x00")
    with pytest.raises(SpecError, match="cannot read"):
        read_vnnlib(tmp_path / "bin.vnnlib")
    (tmp_path / "cut.vnnlib.gz").write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:12])
    with pytest.raises(SpecError, match="cannot read"):
        read_vnnlib(tmp_path / "cut.vnnlib.gz")


VALID = decls(3, 3) + unit_box(2) + (
    "(assert (<= X_2 (* 0.5 1.5))) (assert (>= (- X_2) -2))\n"
    "(assert (or (and (<= Y_0 Y_1) (>= (+ Y_2 (* -2 Y_0)) 0.5)) (and (<= X_0 0.5) (< Y_2 -1e-3))))\n"
)
VOCAB = ["(", ")", "(", ")", "and", "or", "<=", ">=", "=", "+", "-", "*", "/", "X_0", "Y_1", "X_7", "0.5", "-2",
         "1e999", ".", "assert", "declare-const", "Real", "true", "foo", "#", "\u00e9", "X_0_", "()"]
ORIG = re.findall(r"[()]|[^\s()]+", VALID)


@HYP
@given(st.data())
def test_corrupted_files_give_spec_error_or_a_spec_never_another_exception(tmp_path: Path, data) -> None:
    toks = list(ORIG)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(toks) - 1))
        action = data.draw(st.sampled_from(["delete", "insert", "replace", "swap"]))
        tok = data.draw(st.sampled_from(VOCAB + ORIG))
        if action == "delete":
            del toks[i]
        elif action == "insert":
            toks.insert(i, tok)
        elif action == "replace":
            toks[i] = tok
        else:
            j = data.draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = toks[j], toks[i]
    text = " ".join(toks)
    try:
        spec = parse(tmp_path, text)
    except SpecError as e:
        assert str(e).startswith(str(tmp_path / "t.vnnlib") + ":")
        if text.count("(") != text.count(")"):
            assert re.match(r".*t\.vnnlib:\d+:\d+: .*(never closed|closes nothing)", str(e)), str(e)
    else:
        assert isinstance(spec, Spec) and spec.n_inputs >= 1


@HYP
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated_files_that_end_inside_a_form_are_rejected(tmp_path: Path, cut: int) -> None:
    text = VALID[:cut]
    if text.count("(") == text.count(")"):  # cut between forms: a shorter but valid (or empty) file
        assume(False)
    with pytest.raises(SpecError, match=r"t\.vnnlib:\d+:\d+: this '\(' is never closed"):
        parse(tmp_path, text)


@HYP
@given(junk=st.binary(min_size=1, max_size=8), at=st.integers(0, len(VALID)))
def test_random_bytes_never_raise_anything_but_spec_error(tmp_path: Path, junk: bytes, at: int) -> None:
    raw = VALID.encode()
    (tmp_path / "t.vnnlib").write_bytes(raw[:at] + junk + raw[at:])
    try:
        read_vnnlib(tmp_path / "t.vnnlib")
    except SpecError:
        pass


# ---------------------------------------------------------------- writing and round-trips

finite = st.one_of(st.floats(-1e6, 1e6), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def specs(draw) -> Spec:
    nx, ny = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    cases, seen = [], set()
    for _ in range(draw(st.integers(1, 3))):
        a, b = (np.array(draw(st.lists(finite, min_size=nx, max_size=nx))) for _ in range(2))
        lo, hi = np.minimum(a, b) + 0.0, np.maximum(a, b) + 0.0
        key = (tuple(lo), tuple(hi))
        assume(key not in seen)
        seen.add(key)
        unsafe = []
        for _ in range(draw(st.integers(1, 3))):
            k = draw(st.integers(1, 3))
            A = np.array(draw(st.lists(st.lists(finite, min_size=ny, max_size=ny), min_size=k, max_size=k)))
            A[:, draw(st.integers(0, ny - 1))] += draw(st.sampled_from([1.0, -1.0, 0.5]))  # no all-zero row
            assume(np.all(np.any(A != 0, axis=1)))
            unsafe.append(Halfspaces(A, np.array(draw(st.lists(finite, min_size=k, max_size=k)))))
        cases.append(SpecCase(lo, hi, tuple(unsafe)))
    return Spec(tuple(cases), nx, ny, "random")


@HYP
@given(spec=specs(), gz=st.booleans())
def test_write_then_read_round_trips_exactly(tmp_path: Path, spec: Spec, gz: bool) -> None:
    path = write_vnnlib(spec, tmp_path / ("s.vnnlib.gz" if gz else "s.vnnlib"))
    back = read_vnnlib(path, n_inputs=spec.n_inputs, n_outputs=spec.n_outputs)
    assert back.name == "s"
    assert_same(back, spec)


def test_robustness_spec_round_trips_in_vnncomp_shape(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random(784)
    spec = robustness_spec(x, 7, 0.02, 10)
    path = write_vnnlib(spec, tmp_path / "r.vnnlib")
    text = path.read_text()
    assert "(assert (<= X_783 " in text and "(and (<= Y_7 Y_0))" in text and text.count("(and ") == 9
    assert_same(read_vnnlib(path, 784, 10), spec)


def test_write_refuses_what_vnnlib_cannot_state(tmp_path: Path) -> None:
    # Non-finite boxes and constraints never become a Spec (verifiers mishandle them silently).
    with pytest.raises(SpecError, match="infinite or NaN input bound"):
        Spec((SpecCase(np.array([-np.inf]), np.array([1.0]), (Halfspaces(np.eye(1), np.zeros(1)),)),), 1, 1)
    with pytest.raises(SpecError, match="infinite or NaN output constraint"):
        Spec((SpecCase(np.zeros(1), np.ones(1), (Halfspaces(np.eye(1), np.array([np.nan])),)),), 1, 1)
    nothing = Spec((SpecCase(np.zeros(1), np.ones(1), ()),), 1, 1)
    with pytest.raises(SpecError, match="nothing is unsafe"):
        write_vnnlib(nothing, tmp_path / "b.vnnlib")


def test_unconstrained_disjunct_writes_as_no_output_assert(tmp_path: Path) -> None:
    spec = Spec((SpecCase(np.zeros(2), np.ones(2), (Halfspaces(np.zeros((0, 3)), np.zeros(0)),)),), 2, 3)
    assert_same(read_vnnlib(write_vnnlib(spec, tmp_path / "u.vnnlib")), spec)


# ---------------------------------------------------------------- VNN-LIB 2.0 and shipped examples

V2 = """(vnnlib-version <2.0>)
; a comment
(declare-network net
    (declare-input X float32 [2, 2])
    (declare-output Y float32 [3]))
(assert (and (>= X[0, 0] 0.0) (<= X[0, 0] 1.0) (>= X[0, 1] -1.0) (<= X[0, 1] 1.0)))
(assert (== X[1, 0] 0.25))
(assert (<= (* -2.0 X[1, 1]) 1.0))
(assert (< X[1, 1] 0.5))
(assert (or (<= Y[0] Y[2]) (and (> (+ Y[1] (* 0.5 Y[0])) 1.5) (<= Y[2] -0.125))))
"""


def test_vnnlib_2_is_read_through_the_vnnlib_package(tmp_path: Path) -> None:
    spec = parse(tmp_path, V2, n_inputs=4, n_outputs=3)
    expect(
        spec,
        [([0.0, -1.0, 0.25, -0.5], [1.0, 1.0, 0.25, 0.5])],
        [[[([1.0, 0, -1.0], 0.0)], [([-0.5, -1.0, 0], -1.5), ([0, 0, 1.0], -0.125)]]],
    )


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (("0.25", "0.2.5"), r"t\.vnnlib:7:\d+: syntax error"),
        (("(declare-output Y float32 [3])", "(declare-hidden H float32 [3] \"h\") (declare-output Y float32 [3])"),
         "one network, one input and one output"),
        (("(<= X[0, 0] 1.0)", "(<= X[0, 0] Y[0])"), r"t\.vnnlib:\d+: constraint on inputs is not a simple bound"),
        (("(== X[1, 0] 0.25)", "(!= X[1, 0] 0.25)"), r"not supported"),
        (("(<= (* -2.0 X[1, 1]) 1.0)", "(<= (* X[1, 0] X[1, 1]) 1.0)"), r"t\.vnnlib: .*[Nn]on-linear"),
    ],
)
def test_vnnlib_2_errors_are_spec_errors(tmp_path: Path, edit: tuple[str, str], pattern: str) -> None:
    assert edit[0] in V2
    with pytest.raises(SpecError, match=pattern):
        parse(tmp_path, V2.replace(*edit))


def test_shipped_example_specs_parse(tmp_path: Path) -> None:
    files = sorted(SPECS.glob("*.vnnlib"))
    assert len(files) >= 3
    for f in files:
        spec = read_vnnlib(f)
        if "vnnlib-version" not in f.read_text():  # 1.0 examples also round-trip through the writer
            assert_same(read_vnnlib(write_vnnlib(spec, tmp_path / f.name)), spec)
    expect(
        read_vnnlib(SPECS / "two_regions_mixed.vnnlib", 2, 3),
        [([0.0, -1.0], [0.5, 1.0]), ([0.5, -1.0], [1.0, 1.0])],
        [[[([1.0, 0, -1.0], 0.0), ([0, 1.0, -1.0], 0.0)]], [[([-1.0, 1.0, 0], -0.25)]]],
    )
    v2 = read_vnnlib(SPECS / "halfspace_v2.vnnlib", 4, 2)
    expect(v2, [([-1, -1, 0, 0], [1, 1, 0.25, 0.25])], [[[([1, -2], -0.5)]]])


def test_scaled_input_bounds_round_outward(tmp_path: Path) -> None:
    spec = parse(tmp_path, decls(1, 1) + "(assert (<= (* 3 X_0) 1)) (assert (>= (* 3 X_0) -1)) (assert (<= Y_0 0))")
    lo, hi = spec.cases[0].lower[0], spec.cases[0].upper[0]
    assert Fraction(hi) >= Fraction(1, 3) and Fraction(lo) <= Fraction(-1, 3)  # the true box is kept
    assert hi <= np.nextafter(1 / 3, 1) and lo >= np.nextafter(-1 / 3, -1)  # widened by at most one ulp
    exact = parse(tmp_path, decls(1, 1) + "(assert (<= (* 4 X_0) 1)) (assert (>= (* 2 X_0) -1)) (assert (<= Y_0 0))")
    assert exact.cases[0].upper[0] == 0.25 and exact.cases[0].lower[0] == -0.5  # exact quotients stay exact


def _long_and(n: int, nested: bool) -> str:
    atoms = " ".join(f"(<= X_0 {1 + k % 7})" if k % 2 else f"(>= X_0 {-1 - k % 5})" for k in range(n))
    formula = f"(or (and {atoms}) (and (<= X_0 9) (>= X_0 8)))" if nested else f"(and {atoms})"
    return decls(1, 1) + f"(assert {formula})\n(assert (<= Y_0 0))\n"


def test_one_long_and_parses_to_its_box_at_the_top_level_and_nested(tmp_path: Path) -> None:
    # 200k atoms: the old per-atom copy took minutes; benchmarks/specs.py prints how the time grows with n
    (tmp_path / "top.vnnlib").write_text(_long_and(200_000, nested=False))
    top = read_vnnlib(tmp_path / "top.vnnlib")
    assert [(c.lower.tolist(), c.upper.tolist()) for c in top.cases] == [([-1.0], [1.0])]
    (tmp_path / "nested.vnnlib").write_text(_long_and(100_000, nested=True))
    nested = read_vnnlib(tmp_path / "nested.vnnlib")
    assert sorted((c.lower.tolist(), c.upper.tolist()) for c in nested.cases) == [([-1.0], [1.0]), ([8.0], [9.0])]


def test_nested_and_expansion_is_capped_by_its_size(tmp_path: Path) -> None:
    from vfnn.vnnlib import MAX_DNF_ATOMS

    inner = " ".join(f"(<= Y_0 {k})" for k in range(1000)) + " " + " ".join(
        "(or (<= Y_0 1) (<= Y_0 2))" for _ in range(14))  # 16,384 disjuncts of 1,014 atoms each
    text = decls(1, 1) + unit_box(1) + f"(assert (or (and {inner}) (<= Y_0 -5)))\n"
    with pytest.raises(SpecError, match=rf"t.vnnlib:\d+:\d+: .*or {MAX_DNF_ATOMS} constraints"):
        parse(tmp_path, text)


def _input_ors(k: int, nx: int) -> str:
    halves = "".join(f"(assert (or (and (>= X_{i} 0) (<= X_{i} 0.5)) (and (>= X_{i} 0.5) (<= X_{i} 1))))\n"
                     for i in range(k))
    rest = "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 1.0))\n" for i in range(k, nx))
    return decls(nx, 1) + rest + halves + "(assert (<= Y_0 0))\n"


def test_input_disjunctions_beyond_the_box_limit_are_refused_before_they_are_built(tmp_path: Path) -> None:
    import time

    from vfnn.vnnlib import MAX_BOX_BOUNDS

    assert len(parse(tmp_path, _input_ors(3, 784)).cases) == 8  # under the limit: one case per box
    t = time.perf_counter()
    with pytest.raises(SpecError, match=rf"t.vnnlib: .*65536 boxes of 784 inputs .*limit of {MAX_BOX_BOUNDS:,}"):
        parse(tmp_path, _input_ors(16, 784))  # 65,536 boxes: 1.75 GB and 16 s before the limit
    assert time.perf_counter() - t < 3.0
    one_assert = decls(784, 1) + "(assert (and " + " ".join(
        f"(or (and (>= X_{i} 0) (<= X_{i} 0.5)) (and (>= X_{i} 0.5) (<= X_{i} 1)))" for i in range(16)) + " "
    one_assert += " ".join(f"(>= X_{i} 0.0) (<= X_{i} 1.0)" for i in range(16, 784)) + "))\n(assert (<= Y_0 0))\n"
    with pytest.raises(SpecError, match="65536 boxes of 784 inputs"):
        parse(tmp_path, one_assert)


def test_output_disjunctions_share_one_box_and_are_not_limited_by_boxes(tmp_path: Path) -> None:
    ors = "(assert (or " + " ".join(f"(and (<= Y_0 {k}))" for k in range(5000)) + "))\n"
    spec = parse(tmp_path, decls(784, 1) + unit_box(784) + ors)
    assert len(spec.cases) == 1 and len(spec.cases[0].unsafe) == 5000


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    text = decls(1, 1) + unit_box(1) + "(assert (<= Y_0 0))\n"
    (tmp_path / "bom.vnnlib").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom.vnnlib.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))
    for name in ("bom.vnnlib", "bom.vnnlib.gz"):
        spec = read_vnnlib(tmp_path / name)
        assert (spec.n_inputs, spec.n_outputs, spec.cases[0].upper.tolist()) == (1, 1, [1.0])


def test_pipes_are_read_and_a_fifo_without_writer_is_an_error_not_a_hang(tmp_path: Path, monkeypatch) -> None:
    import os
    import threading
    import time

    import vfnn.vnnlib

    text = (decls(1, 1) + unit_box(1) + "(assert (<= Y_0 0))\n").encode()
    r, w = os.pipe()  # what bash's <(cat spec) hands over: /dev/fd/N
    threading.Thread(target=lambda: (os.write(w, text), os.close(w)), daemon=True).start()
    try:
        assert read_vnnlib(f"/dev/fd/{r}").cases[0].upper.tolist() == [1.0]
    finally:
        os.close(r)
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.2)  # the reader is already waiting: it must not have given up
        with open(fifo, "wb") as f:
            f.write(text)

    threading.Thread(target=writer, daemon=True).start()
    assert read_vnnlib(fifo).n_inputs == 1
    monkeypatch.setattr(vfnn.vnnlib, "FIFO_WAIT", 0.3)
    t = time.perf_counter()
    with pytest.raises(SpecError, match=r"spec.fifo: nothing was written to this pipe within 0.3 s"):
        read_vnnlib(fifo)
    assert time.perf_counter() - t < 2.0
