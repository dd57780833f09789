"""One Verifier interface, several tools (built-in MILP, Marabou, α,β-CROWN, plug-ins).

``get_verifier(name).verify(model, spec, timeout, options)`` returns a
:class:`VerificationResult`; see docs/verifiers.md for the contract.
"""

from vfnn.verifiers.base import (
    Availability,
    Option,
    OptionError,
    Problem,
    RawOutcome,
    ToolCrashed,
    UnsupportedProblem,
    Verifier,
    VerifierFailure,
)
from vfnn.verifiers.registry import get_verifier, load_verifier_class, verifier_names, verifier_status
from vfnn.verifiers.replay import validate_counterexample
from vfnn.verifiers.result import EXIT_CODES, STATUSES, Status, VerificationResult

__all__ = [
    "Availability", "Option", "OptionError", "Problem", "RawOutcome", "ToolCrashed", "UnsupportedProblem",
    "Verifier", "VerifierFailure", "get_verifier", "load_verifier_class", "verifier_names", "verifier_status",
    "validate_counterexample", "EXIT_CODES", "STATUSES", "Status", "VerificationResult",
]
