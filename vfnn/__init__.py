"""vfnn: train verification-friendly neural networks and verify them."""

__version__ = "0.1.0"
