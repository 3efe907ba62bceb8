"""Guidance that composes: cond_fns (ADM's gradient contract) and denoiser wrappers stack freely.

- ``classifier_cond_fn``: a noisy classifier's scaled log-likelihood gradient (ADM's cond_fn).
- ``combine_cond_fns`` / ``restrict_cond_fn``: sum gradients, or guide only inside a timestep range.
- ``GradientGuidedDenoiser``: any cond_fn as a score shift inside the denoiser, for any sampler.
- ``ClassifierFreeGuidance``: CFG in either convention, ``on_eps`` (uncond + s*(cond-uncond)) or
  ``on_posterior_mean`` ((1+w)*cond - w*uncond on the clipped-x0 posterior mean); ``drop_labels`` for training.
"""

from .cfg import ClassifierFreeGuidance, drop_labels, null_labels_like
from .classifier import classifier_cond_fn, combine_cond_fns, restrict_cond_fn
from .gradient import CondFn, GradientGuidedDenoiser, shift_mean, shift_score

__all__ = [
    "ClassifierFreeGuidance", "drop_labels", "null_labels_like", "classifier_cond_fn", "combine_cond_fns",
    "restrict_cond_fn", "CondFn",
    "GradientGuidedDenoiser", "shift_mean", "shift_score",
]
