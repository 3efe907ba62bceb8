"""Guidance that composes: cond_fns (ADM's gradient contract) and denoiser wrappers stack freely.

- ``classifier_cond_fn``: a noisy classifier's scaled log-likelihood gradient (ADM's cond_fn).
- ``combine_cond_fns`` / ``restrict_cond_fn``: sum gradients, or guide only inside a timestep range.
- ``GradientGuidedDenoiser``: any cond_fn as a score shift inside the denoiser, for any sampler.
- ``ClassifierFreeGuidance``: CFG in either convention (``scale`` or ``w``).
"""

from .cfg import ClassifierFreeGuidance
from .classifier import classifier_cond_fn, combine_cond_fns, restrict_cond_fn
from .gradient import CondFn, GradientGuidedDenoiser, shift_mean, shift_score

__all__ = [
    "ClassifierFreeGuidance", "classifier_cond_fn", "combine_cond_fns", "restrict_cond_fn", "CondFn",
    "GradientGuidedDenoiser", "shift_mean", "shift_score",
]
