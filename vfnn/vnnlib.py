"""VNN-LIB reading and writing.

VNN-LIB 1.0 (the VNN-COMP files) is read by vfnn's own s-expression reader: the PyPI ``vnnlib``
package only parses 2.0, and its ``compat.transform`` gets 1.0 semantics wrong (see tool-facts).
2.0 files (``declare-network``) are parsed by ``vnnlib`` and mapped onto the same :class:`Spec`.

Semantics: the conjunction of all asserts, expanded to disjunctive normal form.  Input constraints
must be bounds on single ``X_i``; every disjunct's box becomes a :class:`SpecCase` (disjuncts with
the same box share one) and its output constraints one :class:`Halfspaces`.  Strict ``<``/``>`` are
read as ``<=``/``>=``: the unsafe set becomes its closure, so "unsat" stays sound, and a
counterexample on the boundary needs the usual margin (tool-facts).  Arithmetic is float64 (exact
for the usual "variable vs number" forms); a bound from a scaled input constraint is rounded outward.
Every malformed file raises :class:`SpecError` with ``FILE:LINE:COL``.

Limits, checked before anything that large is built: the DNF may have up to ``MAX_DISJUNCTS``
disjuncts (one nested ``and`` up to ``MAX_DNF_ATOMS`` constraints), and the input boxes up to
``MAX_BOX_BOUNDS`` bounds in all (boxes x inputs: 5,000 boxes of 784 inputs fit).  Parsing is
linear in the file's size.  A UTF-8 byte-order mark is skipped; FIFOs and ``<(cmd)`` are read once.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import select
import stat
import zlib
from fractions import Fraction
from itertools import product
from pathlib import Path

import numpy as np

from vfnn.errors import SpecError, VfnnError
from vfnn.spec import Halfspaces, Spec, SpecCase

MAX_DISJUNCTS = 100_000  # disjuncts of the expanded DNF
MAX_DNF_ATOMS = 10_000_000  # constraints in the DNF of one nested 'and' (top-level ones are not expanded)
FIFO_WAIT = 30.0  # seconds a named pipe may go without a writer
MAX_BOX_BOUNDS = 4_000_000  # input boxes x inputs (~100 MB while the cases are built)
_TOKEN = re.compile(r"[()]|[^\s()]+")
_COMMENT = re.compile(r";[^\n]*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VARNAME = re.compile(r"([XY])_(0|[1-9]\d*)")
_V2 = re.compile(r"\(\s*(?:vnnlib-version|declare-network)\b")
_LEGE = ("<=", ">=")
_CMP = {"<=", ">=", "<", ">", "=", "=="}
_IGNORED = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}

Con = tuple  # (coefs: dict[var index, float], rhs: float, pos): sum coefs[v] * v <= rhs
Dnf = list  # list of conjunctions, each a list of Con; [] is false, [[]] is true


class _Reader:
    """VNN-LIB 1.0: tokens by one regex; tree nodes are ``[open token index, child, ...]``, atoms ints."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, _COMMENT.sub("", text) if ";" in text else text
        self.toks = _TOKEN.findall(self.text)
        self.vars: dict[str, int] = {}

    def error(self, k: int | None, msg: str) -> SpecError:
        """``FILE:LINE:COL: msg`` for token ``k`` (past the end: end of file; negative: start)."""
        if k is None:
            return SpecError(f"{self.name}: {msg}")
        ms = (m.start() for i, m in enumerate(_TOKEN.finditer(self.text)) if i == k)
        off = next(ms, len(self.text) if k >= 0 else 0)
        line, col = self.text.count("\n", 0, off) + 1, off - self.text.rfind("\n", 0, off)
        return SpecError(f"{self.name}:{line}:{col}: {msg}")

    def tree(self) -> list:
        root: list = [-1]
        top, stack = root, []
        for i, t in enumerate(self.toks):
            if t == "(":
                node = [i]
                top.append(node)
                stack.append(top)
                top = node
            elif t == ")":
                if not stack:
                    raise self.error(i, "unbalanced ')' closes nothing")
                top = stack.pop()
            else:
                top.append(i)
        if stack:
            raise self.error(root[-1][0], "this '(' is never closed (unbalanced parentheses)")
        return root[1:]

    def head(self, n: list | int, what: str) -> str:
        if isinstance(n, int):
            raise self.error(n, f"expected {what} in parentheses, got '{self.toks[n]}'")
        if len(n) < 2 or not isinstance(n[1], int):
            raise self.error(n[0], f"expected {what}, got a list without an operator")
        return self.toks[n[1]]

    def parse(self) -> tuple[list[Dnf], dict[str, list[int]]]:
        """The asserts' DNFs and the declaration positions of X and Y (in index order)."""
        forms, decls, asserts = self.tree(), {}, []
        if not forms:
            raise self.error(-1, "empty file: no declarations or assertions")
        for f in forms:
            cmd = self.head(f, "a command")
            if cmd in ("declare-const", "declare-fun"):
                shape = [int, int, int] if cmd == "declare-const" else [int, int, list, int]
                if [type(a) for a in f[1:]] != shape:
                    raise self.error(f[0], f"malformed {cmd}: expected ({cmd} X_<i> Real)")
                name, typ = self.toks[f[2]], self.toks[f[-1]]
                m = _VARNAME.fullmatch(name)
                if not m:
                    raise self.error(f[2], f"unsupported variable name '{name}': VNN-LIB 1.0 uses X_<i> and Y_<j>")
                if typ != "Real":
                    raise self.error(f[-1], f"variable {name} has type '{typ}', expected Real")
                if name in decls:
                    raise self.error(f[2], f"{name} is declared twice")
                decls[name] = (m[1], int(m[2]), f[2])
            elif cmd == "assert":
                if len(f) != 3:
                    raise self.error(f[0], f"assert takes exactly one formula, got {len(f) - 2}")
                asserts.append((f[2], f[0]))
            elif cmd not in _IGNORED:
                raise self.error(f[1], f"unknown command '{cmd}'")
        pos = {}  # declaration positions, by kind, in index order
        for kind, word in (("X", "input"), ("Y", "output")):
            idx = sorted((i, p) for k, i, p in decls.values() if k == kind)
            if not idx:
                raise self.error(None, f"no {word} variables {kind}_<i> are declared")
            for j, (i, p) in enumerate(idx):
                if i != j:
                    raise self.error(p, f"{kind}_{j} is not declared but {kind}_{i} is (indices must be 0..n-1)")
            pos[kind] = [p for _, p in idx]
        nx = len(pos["X"])
        self.vars = {n: i if k == "X" else nx + i for n, (k, i, _) in decls.items()}
        dnfs, total = [], 1
        for a, where in self.conjuncts(asserts):
            if (c := self.bound(a)) is not None:  # fast path: (assert (<= X_i number))
                dnfs.append([[c]])
                continue
            try:
                dnfs.append(self.dnf(a))
            except RecursionError:
                raise self.error(a[0] if type(a) is list else a, "formula nested too deeply") from None
            total *= len(dnfs[-1])
            if not dnfs[-1]:
                raise self.error(where, "this assert can never hold (constant false): no input is unsafe")
            if total > MAX_DISJUNCTS:
                raise self.error(where, f"the asserts up to here expand to over {MAX_DISJUNCTS} disjuncts in DNF")
        return dnfs, pos

    def conjuncts(self, asserts: list[tuple]) -> list[tuple]:
        """The asserts with top-level ``and`` s split into separate asserts (the same formula), each
        with its assert's position: their conjunction is then built once, not copied per disjunct."""
        out, stack = [], list(reversed(asserts))
        while stack:
            a, where = stack.pop()
            if type(a) is list and len(a) > 2 and type(a[1]) is int and self.toks[a[1]] == "and":
                stack.extend((b, where) for b in reversed(a[2:]))
            else:
                out.append((a, where))
        return out

    def bound(self, n: list | int) -> Con | None:
        """``(<= V number)`` or ``(>= V number)`` as a constraint without building terms (the
        common atom, worth a fast path), else None."""
        if type(n) is not list or len(n) != 4 or not type(n[1]) is type(n[2]) is type(n[3]) is int:
            return None
        op, v, k = self.toks[n[1]], self.vars.get(self.toks[n[2]]), self.toks[n[3]]
        if op not in _LEGE or v is None or not _NUMBER.fullmatch(k) or not math.isfinite(x := float(k)):
            return None
        return ({v: 1.0}, x, n[0]) if op == "<=" else ({v: -1.0}, -x, n[0])

    def lin(self, n: list | int) -> tuple[dict[int, float], float]:
        """A linear term as (coefficients, constant)."""
        if isinstance(n, int):
            t = self.toks[n]
            v = self.vars.get(t)
            if v is not None:
                return {v: 1.0}, 0.0
            if _NUMBER.fullmatch(t):
                x = float(t)
                if not np.isfinite(x):
                    raise self.error(n, f"number '{t}' is out of range")
                return {}, x
            if _VARNAME.fullmatch(t):
                raise self.error(n, f"undeclared variable '{t}'")
            raise self.error(n, f"expected a number or a declared variable, got '{t}'")
        op, args = self.head(n, "a term"), [self.lin(a) for a in n[2:]]
        if op not in ("+", "-", "*", "/"):
            raise self.error(n[1], f"unknown arithmetic operator '{op}' (supported: + - * /)")
        if not args:
            raise self.error(n[1], f"'{op}' needs at least one argument")
        if op == "-" and len(args) == 1:
            return {k: -c for k, c in args[0][0].items()}, -args[0][1]
        if op in "+-":
            coefs, const = dict(args[0][0]), args[0][1]
            s = 1.0 if op == "+" else -1.0
            for c, k in args[1:]:
                for v, a in c.items():
                    coefs[v] = coefs.get(v, 0.0) + s * a
                const += s * k
            return {v: a for v, a in coefs.items() if a != 0.0}, const
        if op == "*":
            if sum(1 for c, _ in args if c) > 1:
                raise self.error(n[1], "non-linear term: product of variables")
            scale, (coefs, const) = 1.0, ({}, 1.0)
            for c, k in args:
                if c:
                    coefs, const = c, k
                else:
                    scale *= k
            return {v: a * scale for v, a in coefs.items() if a * scale != 0.0}, const * scale
        if len(args) < 2 or any(c or k == 0.0 for c, k in args[1:]):
            raise self.error(n[1], "'/' must divide by non-zero constants")
        coefs, const = args[0]
        for _, k in args[1:]:
            coefs, const = {v: a / k for v, a in coefs.items() if a / k != 0.0}, const / k
        return coefs, const

    def conjoin(self, n: list, parts: list[Dnf]) -> Dnf:
        """The DNF of an ``and`` in time linear in its size: a one-disjunct part extends the
        conjunctions in place (copying them per atom was quadratic); only real disjunctions copy."""
        out: Dnf = [[]]
        atoms = 0  # sum of len(x) over out
        for d in parts:
            grown = len(d) * atoms + len(out) * sum(len(y) for y in d)
            if len(out) * len(d) > MAX_DISJUNCTS or grown > MAX_DNF_ATOMS:
                raise self.error(n[0], f"expanding this 'and' to DNF gives over {MAX_DISJUNCTS} disjuncts "
                                       f"or {MAX_DNF_ATOMS} constraints")
            atoms = grown
            if len(d) == 1:
                for x in out:
                    x.extend(d[0])
            else:
                out = [x + y for x in out for y in d]
        return out

    def dnf(self, n: list | int) -> Dnf:
        if (c := self.bound(n)) is not None:
            return [[c]]
        if isinstance(n, int) and self.toks[n] in ("true", "false"):
            return [[]] if self.toks[n] == "true" else []
        op, args = self.head(n, "a formula"), n[2:]
        if op in ("and", "or") and not args:
            raise self.error(n[1], f"'{op}' needs at least one argument")
        if op == "or":
            out = [c for a in args for c in self.dnf(a)]
            if len(out) > MAX_DISJUNCTS:
                raise self.error(n[0], f"this 'or' has over {MAX_DISJUNCTS} disjuncts in DNF")
            return out
        if op == "and":
            return self.conjoin(n, [self.dnf(a) for a in args])
        if op not in _CMP:
            hint = " ('not' is not supported)" if op == "not" else ""
            raise self.error(n[1], f"unknown operator '{op}' in a formula{hint}")
        if len(args) < 2:
            raise self.error(n[1], f"'{op}' needs at least two arguments")
        terms, conj = [self.lin(a) for a in args], []
        for (a, ka), (b, kb) in zip(terms, terms[1:], strict=False):
            le, ge = (a, ka, b, kb), (b, kb, a, ka)
            for lo, klo, hi, khi in (le,) if op[0] == "<" else (ge,) if op[0] == ">" else (le, ge):
                coefs = dict(lo)  # lo - hi <= khi - klo
                for v, c in hi.items():
                    coefs[v] = coefs.get(v, 0.0) - c
                coefs, rhs = {v: c for v, c in coefs.items() if c != 0.0}, khi - klo
                if not (math.isfinite(rhs) and all(math.isfinite(c) for c in coefs.values())):
                    raise self.error(n[0], "arithmetic overflow in this comparison")
                if coefs:
                    conj.append((coefs, rhs, n[0]))
                elif rhs < 0.0:
                    return []  # a false constant comparison
        return [conj]


def _apply(cons: list, lo: list, hi: list, lp: list, rows: list, nx: int, err) -> None:
    """Fold constraints into box bounds (single X_i) and output rows (Y only)."""
    for coefs, rhs, pos in cons:
        if len(coefs) == 1:
            ((v, a),) = coefs.items()
            if v < nx:
                q = rhs / a + 0.0
                if abs(a) != 1.0 and math.isfinite(q) and Fraction(rhs) / Fraction(a) != Fraction(q):  # round outward
                    q = math.nextafter(q, math.inf if a > 0 else -math.inf)
                if a > 0 and q < hi[v]:
                    hi[v], lp[v] = q, pos
                elif a < 0 and q > lo[v]:
                    lo[v], lp[v] = q, pos
                continue
        elif min(coefs) < nx:
            raise err(pos, "constraint on inputs is not a simple bound on one X_i (input regions must be boxes)")
        rows.append((coefs, rhs))


def _check_boxes(multi: list[Dnf], nx: int, err) -> None:
    """Refuse input disjunctions whose boxes would not fit in memory, before allocating any.

    Each assert contributes at most as many boxes as it has distinct sets of input bounds, so the
    product over the asserts bounds the number of boxes from above."""
    boxes = 1
    for d in multi:
        parts = {frozenset((v, a, rhs) for coefs, rhs, _ in conj if len(coefs) == 1 for v, a in coefs.items() if v < nx)
                 for conj in d}
        boxes *= len(parts)
    if boxes * nx > MAX_BOX_BOUNDS:
        raise err(None, f"the input disjunctions expand to up to {boxes} boxes of {nx} inputs ({boxes * nx:,} bounds, "
                        f"over the limit of {MAX_BOX_BOUNDS:,}): split the spec into several files")


def _build(dnfs: list[Dnf], nx: int, ny: int, err, xpos: list, name: str) -> Spec:
    """The conjunction of the asserts' DNFs as a Spec; single-disjunct asserts are folded in once."""
    common, multi = [], []
    for d in dnfs:
        if not d:
            raise err(None, "an assert can never hold (constant false): the spec has no unsafe input")
        common.extend(d[0]) if len(d) == 1 else multi.append(d)
    if math.prod(len(d) for d in multi) > MAX_DISJUNCTS:
        raise err(None, f"the asserts expand to over {MAX_DISJUNCTS} disjuncts in DNF; simplify the spec")
    _check_boxes(multi, nx, err)
    inf = math.inf
    base = ([-inf] * nx, [inf] * nx, [None] * nx, [])
    _apply(common, *base, nx, err)
    cases: dict[tuple, tuple] = {}
    for choice in product(*multi):
        lo, hi, lp, rows = (list(x) for x in base)
        for conj in choice:
            _apply(conj, lo, hi, lp, rows, nx, err)
        lo_a, hi_a = np.array(lo), np.array(hi)
        for i in np.flatnonzero(np.isinf(lo_a) | np.isinf(hi_a))[:1]:
            side = "lower" if lo[i] == -inf else "upper"
            raise err(xpos[i], f"X_{i} has no {side} bound" + (" in some disjunct" if multi else ""))
        for i in np.flatnonzero(lo_a > hi_a)[:1]:
            raise err(lp[i], f"empty input box: X_{i} has lower bound {lo[i]!r} > upper bound {hi[i]!r}")
        A, b = np.zeros((len(rows), ny)), np.array([r for _, r in rows], dtype=np.float64)
        for r, (coefs, _) in enumerate(rows):
            for v, a in coefs.items():
                A[r, v - nx] = a
        key = lo_a.tobytes() + hi_a.tobytes()  # compact: tuples would keep every float object alive
        if key not in cases:
            cases[key] = (lo_a, hi_a, [])
        cases[key][2].append(Halfspaces(A, b))
    return Spec(tuple(SpecCase(lo, hi, tuple(h)) for lo, hi, h in cases.values()), nx, ny, name)


def _read_v1(name: str, text: str) -> Spec:
    r = _Reader(name, text)
    dnfs, pos = r.parse()
    return _build(dnfs, len(pos["X"]), len(pos["Y"]), r.error, pos["X"], name)


def _read_v2(name: str, text: str) -> Spec:
    """VNN-LIB 2.0 through the official ``vnnlib`` package (one network, one input, one output)."""
    import vnnlib

    def err(line: int | None, msg: str) -> SpecError:
        return SpecError(f"{name}:{line}: {msg}" if line else f"{name}: {msg}")

    try:
        q = vnnlib.parse_query_string(text)
    except Exception as e:  # the package raises VNNLibException: a JSON report or a one-line parse error
        msg = str(e)
        try:
            first = json.loads(msg)["errors"][0]
            sym, hint = first.get("offendingSymbol", ""), first.get("hint", "")
            raise err(first.get("line"), f"{first['message']} '{sym}': {hint}") from None
        except (ValueError, KeyError, IndexError, TypeError):
            m = re.search(r"line (\d+), column (\d+): (.*)", msg)
            raise (SpecError(f"{name}:{m[1]}:{m[2]}: syntax error at {m[3]}") if m else err(None, msg)) from None
    nets = q.networks
    if len(nets) != 1 or len(nets[0].inputs) != 1 or len(nets[0].outputs) != 1 or nets[0].hidden:
        raise err(None, "vfnn reads VNN-LIB 2.0 with one network, one input and one output, no hidden variables")
    shapes = {"Input": list(nets[0].inputs[0].shape), "Output": list(nets[0].outputs[0].shape)}
    nx, ny = math.prod(shapes["Input"]), math.prod(shapes["Output"])
    ops = {"LessEqual": 1, "LessThan": 1, "GreaterEqual": -1, "GreaterThan": -1, "Equal": 0}

    def con(c) -> list[Con]:
        kind = type(c).__name__
        if kind not in ops:
            raise err(None, f"comparison {c} is not supported (only <=, >=, <, >, ==)")
        coefs, const, line = {}, 0.0, None
        for side, expr in ((1.0, c.lhs), (-1.0, c.rhs)):
            lin = expr.to_linear_expr()  # raises VNNLibException on non-linear terms
            const += side * lin.constant
            for t in lin.terms:
                flat = 0
                for i, d in zip(t.var.indices, shapes[t.var.kind.name], strict=False):
                    flat = flat * d + i
                v = flat if t.var.kind.name == "Input" else nx + flat
                coefs[v], line = coefs.get(v, 0.0) + side * t.coeff, t.var.line
        coefs = {v: a for v, a in coefs.items() if a != 0.0}  # sum coefs * v + const <= 0
        out = [(coefs, -const, line)] if ops[kind] >= 0 else []
        if ops[kind] <= 0:
            out.append(({v: -a for v, a in coefs.items()}, const, line))
        if any(not cs and r < 0 for cs, r, _ in out):
            return None  # a false constant comparison
        return [o for o in out if o[0]]

    dnfs = []
    for a in q.assertions:
        try:
            conjs = [[con(c) for c in conj] for conj in a.expr.to_dnf()]
        except vnnlib.VNNLibException as e:
            raise err(None, f"{a}: {e}") from None
        dnfs.append([[y for x in cs for y in x] for cs in conjs if all(x is not None for x in cs)])
    return _build(dnfs, nx, ny, err, [None] * nx, name)


def input_file(path: str | Path, what: str) -> Path:
    """``path`` as an input file: missing or a folder is one line (a VfnnError) instead of click's
    usage block; anything else that exists passes, FIFOs and ``<(cmd)`` included."""
    p = Path(path)
    if p.is_dir():
        raise VfnnError(f"{p}: is a folder, not {what}")
    if not p.exists():
        raise VfnnError(f"{p}: no such file ({what})")
    return p


def read_bytes(path: Path, error: type[VfnnError] = SpecError) -> bytes:
    """A file's bytes; a FIFO (also ``<(cmd)``) is read once to its end, and one that nobody
    writes to within ``FIFO_WAIT`` seconds is an ``error`` rather than a hang."""
    if not stat.S_ISFIFO(path.stat().st_mode):
        return path.read_bytes()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a plain open would block until a writer comes
    try:
        if not select.select([fd], [], [], FIFO_WAIT)[0]:
            raise error(f"{path}: nothing was written to this pipe within {FIFO_WAIT:g} s")
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_vnnlib(path: str | Path, n_inputs: int | None = None, n_outputs: int | None = None) -> Spec:
    """Read a VNN-LIB 1.0 or 2.0 file (plain or gzip) into a Spec; optionally check its sizes."""
    p = Path(path)
    try:
        data = read_bytes(p, SpecError)
        text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8-sig")  # -sig: a BOM
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise SpecError(f"{p}: cannot read the specification: {e}") from None
    name = p.name.removesuffix(".gz").removesuffix(".vnnlib")
    v2 = _V2.search(_COMMENT.sub("", text) if ";" in text else text)
    spec = (_read_v2 if v2 else _read_v1)(str(p), text)
    spec = Spec(spec.cases, spec.n_inputs, spec.n_outputs, name)
    for n, want, word in ((spec.n_inputs, n_inputs, "inputs"), (spec.n_outputs, n_outputs, "outputs")):
        if want is not None and n != want:
            raise SpecError(f"{p}: declares {n} {word}, expected {want}")
    return spec


def _num(x: float) -> str:
    return repr(float(x))


def _row(a: np.ndarray, b: float) -> str:
    nz = np.flatnonzero(a)
    if len(nz) == 2 and b == 0 and sorted(a[nz].tolist()) == [-1.0, 1.0]:
        p, m = (nz[0], nz[1]) if a[nz[0]] > 0 else (nz[1], nz[0])
        return f"(<= Y_{p} Y_{m})"
    terms = [f"Y_{j}" if a[j] == 1.0 else f"(* {_num(a[j])} Y_{j})" for j in nz]
    lhs = "0.0" if not terms else terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {_num(b)})"


def write_vnnlib(spec: Spec, path: str | Path) -> Path:
    """Write ``spec`` as VNN-LIB 1.0 (gzip if the name ends in .gz); floats round-trip exactly.

    One case: the box as single-variable asserts and the unsafe DNF as one ``(assert (or (and ..)))``.
    Several cases: one ``or`` whose ``and`` s hold both the case's box and one unsafe disjunct.
    """
    out = [f"; {' '.join(spec.name.splitlines())}: written by vfnn (VNN-LIB 1.0; the asserts describe the unsafe set)"]
    out += [f"(declare-const X_{i} Real)" for i in range(spec.n_inputs)]
    out += [f"(declare-const Y_{j} Real)" for j in range(spec.n_outputs)]

    def box(c: SpecCase) -> list[str]:
        lu = zip(c.lower.tolist(), c.upper.tolist(), strict=True)
        return [f"({op} X_{i} {v!r})" for i, (lo, u) in enumerate(lu) for op, v in (("<=", u), (">=", lo))]

    def conj(h: Halfspaces) -> list[str]:
        return [_row(a, b) for a, b in zip(h.A, h.b, strict=True)]

    if len(spec.cases) == 1:
        c = spec.cases[0]
        out += [f"(assert {x})" for x in box(c)]
        ands = [conj(h) for h in c.unsafe]
        if any(not a for a in ands):
            ands = []  # one disjunct is unconstrained: every output is unsafe, no output assert needed
        elif not ands:
            raise SpecError(f"{spec.name}: nothing is unsafe (no disjuncts); VNN-LIB 1.0 cannot state that")
    else:
        ands = [box(c) + conj(h) for c in spec.cases for h in c.unsafe]
        if not ands:
            raise SpecError(f"{spec.name}: nothing is unsafe (no disjuncts); VNN-LIB 1.0 cannot state that")
    if ands:
        out += ["(assert (or"] + [f"    (and {' '.join(a)})" for a in ands] + ["))"]
    text = "\n".join(out) + "\n"
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(gzip.compress(text.encode(), mtime=0) if p.suffix == ".gz" else text.encode())
    return p
