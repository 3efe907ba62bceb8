"""ADM import path: ``from guided_diffusion.losses import normal_kl, ...``."""

from .diffusion.losses import (  # noqa: F401
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
