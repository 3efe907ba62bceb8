"""ADM import shim: ``from guided_diffusion.losses import normal_kl, ...`` keeps working."""

from .diffusion.losses import (  # noqa: F401
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
