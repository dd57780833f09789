"""Imported once by the campaign's fork server, so that every worker forked from it starts warm."""

import torch  # noqa: F401  (the slow import: ~1 s)

import vfnn.campaign.execute  # noqa: F401
import vfnn.onnx_io  # noqa: F401
import vfnn.verifiers.registry  # noqa: F401
import vfnn.vnnlib  # noqa: F401
