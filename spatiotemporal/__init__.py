"""spatiotemporal: video and 3D point-cloud transformers, from decode to evaluation.

Kept import-light on purpose: `spatiotemporal --help` must not pay for torch.
"""

__version__ = "0.1.0"
