"""Guidance that composes: guides (gradients of log p(y | x_t) at a noise level) and denoiser wrappers stack.

- ``Guide`` / ``CondFnGuide`` / ``classifier_guide`` / ``SumGuide``: a gradient at a :class:`NoiseLevel`,
  reading the unit of time it declares (or the train index of the schedule it was trained on).
- ``classifier_cond_fn``, ``combine_cond_fns``, ``restrict_cond_fn``: ADM's cond_fn contract (train indices).
- ``GradientGuidedDenoiser``: any guide as a score shift inside the denoiser, for any sampler.
- ``ClassifierFreeGuidance``: CFG in either convention, ``on_eps`` (uncond + s*(cond-uncond)) or
  ``on_posterior_mean`` ((1+w)*cond - w*uncond on the clipped-x0 posterior mean); ``drop_labels`` for training.
- ``FeatureInjection``: record activations at a network's hook points in one pass, replace them in another.
"""

from ..denoisers import shift_score
from .cfg import ClassifierFreeGuidance, drop_labels, null_labels_like
from .classifier import CondFn, classifier_cond_fn, combine_cond_fns, restrict_cond_fn
from .gradient import GradientGuidedDenoiser
from .guides import CondFnGuide, Guide, SumGuide, as_guide, classifier_guide
from .injection import FeatureInjection

__all__ = [
    "ClassifierFreeGuidance", "drop_labels", "null_labels_like", "classifier_cond_fn", "combine_cond_fns",
    "restrict_cond_fn", "CondFn", "Guide", "CondFnGuide", "SumGuide", "as_guide", "classifier_guide",
    "GradientGuidedDenoiser", "FeatureInjection", "shift_score",
]
