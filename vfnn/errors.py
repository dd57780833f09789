"""User-facing error types.

Every failure a user can cause (a bad file, an unsupported operator, a missing tool) raises a
subclass of :class:`VfnnError` whose message is one line saying what and where. The CLI prints
that line and exits non-zero; anything else is a bug in vfnn and keeps its traceback.
"""


class VfnnError(Exception):
    """Base class of every error that is the user's to fix."""


class ModelError(VfnnError):
    """A network file cannot be read or contains something vfnn does not support."""


class SpecError(VfnnError):
    """A specification cannot be read or does not fit the network."""


class VerifierUnavailable(VfnnError):
    """A verifier is not installed or not configured."""


class DataError(VfnnError):
    """A dataset is missing, corrupt, or cannot be downloaded."""
