"""The one result type every verifier returns.

A :class:`VerificationResult` is immutable and JSON-serialisable.  It is built in exactly one
place, :meth:`vfnn.verifiers.base.Verifier.verify`, so every adapter reports the same fields
with the same meaning.  Statuses use the VNN-COMP vocabulary:

* ``unsat``   -- the property holds (no input in the region reaches the unsafe outputs);
* ``sat``     -- violated; ``counterexample_input``/``counterexample_output`` hold a point that
  vfnn replayed with onnxruntime on the original ONNX file;
* ``timeout`` -- the time budget ran out;
* ``unknown`` -- the tool gave up before the deadline (incomplete method, numerical trouble);
* ``error``   -- the tool crashed, could not express the property, or reported a
  counterexample that did not replay (``message`` says which).

``unknown`` and ``timeout`` are never merged: one says "more time would not help", the other
says "it might".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from vfnn.stats import UnstableRecord

Status = Literal["unsat", "sat", "timeout", "unknown", "error"]
STATUSES: tuple[str, ...] = ("unsat", "sat", "timeout", "unknown", "error")
DECISIVE: tuple[str, ...] = ("sat", "unsat")  # the statuses that answer the question

#: Exit codes of ``vfnn verify`` (2 is reserved for user errors: bad file, missing verifier).
EXIT_CODES: dict[str, int] = {"unsat": 0, "sat": 1, "unknown": 3, "timeout": 4, "error": 5}


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of one verification query (see the module docstring for the statuses)."""

    status: Status
    verifier: str
    verifier_version: str | None
    options: dict[str, Any]
    wall_time: float  # seconds, the whole verify() call as seen by vfnn
    tool_time: float | None  # seconds the tool itself reports (None when it does not)
    timeout: float
    counterexample_input: list[float] | None = None  # flat, in the spec's X_i order
    counterexample_output: list[float] | None = None  # onnxruntime's output at that input
    case_index: int | None = None  # which input region of the spec the counterexample lies in
    unstable: UnstableRecord | None = None  # vfnn's own bounds, same method for every verifier
    tool_stats: dict[str, Any] = field(default_factory=dict)  # what the tool reports (splits, domains...)
    message: str = ""
    model_path: str | None = None
    spec_path: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verification status {self.status!r}")
        if self.status == "sat" and self.counterexample_input is None:
            raise ValueError("a sat result needs a counterexample")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def decided(self) -> bool:
        return self.status in DECISIVE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unstable"] = None if self.unstable is None else self.unstable.to_dict()
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> VerificationResult:
        d = dict(d)
        if d.get("unstable") is not None:
            d["unstable"] = UnstableRecord.from_dict(d["unstable"])
        known = set(VerificationResult.__dataclass_fields__)
        return VerificationResult(**{k: v for k, v in d.items() if k in known})

    @staticmethod
    def from_json(text: str) -> VerificationResult:
        return VerificationResult.from_dict(json.loads(text))
