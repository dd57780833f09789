"""Regressions of soundness bugs: each case here once made a verifier answer unsat wrongly."""

import numpy as np
import pytest

from vfnn.network import Dense, Network, ReLU
from vfnn.spec import Halfspaces, Spec, SpecCase
from vfnn.verifiers.registry import get_verifier


def _tiny_violation() -> tuple[Network, Spec]:
    """y = relu(x) on x in [0, 0.5 + 2e-5]; unsafe when y >= 0.5: violated, but only by 2e-5."""
    one = np.ones((1, 1), np.float32)
    net = Network((1,), (Dense(one, np.zeros(1, np.float32)), ReLU(), Dense(one, np.zeros(1, np.float32))))
    case = SpecCase(np.zeros(1), np.array([0.5 + 2e-5]), (Halfspaces(-np.ones((1, 1)), np.array([-0.5])),))
    return net, Spec((case,), 1, 1, "tiny")


@pytest.mark.parametrize("name", ["marabou", "milp"])
def test_violation_smaller_than_the_margin_is_still_found(name: str) -> None:
    verifier = get_verifier(name)
    if not verifier.availability().available:
        pytest.skip(f"{name} is not installed")
    net, spec = _tiny_violation()
    result = verifier.verify(net, spec, timeout=20)
    assert result.status == "sat", result.message
    assert result.counterexample_output[0] >= 0.5 - 1e-4


def test_float64_weights_are_verified_as_the_float32_network_that_runs() -> None:
    """1000 - 3e-5 rounds to 1000.0 in float32: y(100) = 0 is unsafe (y >= -1e-3) for the network
    that onnxruntime runs, while in float64 y(100) = -0.003 is safe.  The MILP once encoded the
    float64 weights and answered unsat."""
    w = np.array([[1000.0 - 3e-5]])  # float64, as numpy makes it
    net = Network((1,), (Dense(np.ones((1, 1)), np.zeros(1)), ReLU(), Dense(w, np.array([-100000.0]))))
    assert net.layers[2].weight.dtype == np.float32
    case = SpecCase(np.zeros(1), np.array([100.0]), (Halfspaces(-np.ones((1, 1)), np.array([1e-3])),))
    spec = Spec((case,), 1, 1, "rounding")
    result = get_verifier("milp").verify(net, spec, timeout=20, options={"attack_steps": 0})
    assert result.status == "sat", result.message


def test_infinite_input_bounds_are_refused_before_any_verifier_runs() -> None:
    from vfnn.errors import SpecError

    with pytest.raises(SpecError, match="infinite"):
        Spec((SpecCase(np.zeros(1), np.array([np.inf]), (Halfspaces(-np.ones((1, 1)), np.array([-1.0])),)),), 1, 1)
