"""Imported once by the campaign's fork server, so that every worker forked from it (and every
solve forked from a worker) starts warm: a job's deadline starts when a worker takes it."""

import torch  # noqa: F401  (the slow import: ~1 s)

import vfnn.bounds  # noqa: F401  (the unstable-neuron record, computed in the solve's child)
import vfnn.campaign.execute  # noqa: F401
import vfnn.onnx_io  # noqa: F401
import vfnn.stats  # noqa: F401
import vfnn.verifiers.milp  # noqa: F401  (the built-in verifier; others load on first use)
import vfnn.verifiers.registry  # noqa: F401
import vfnn.vnnlib  # noqa: F401
