"""Marabou adapter: tiny violations must not be hidden by the margin that makes points replay."""

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
