"""ADM's classifier guidance: cond_fns ``cond_fn(x, t, **model_kwargs)`` built from noisy classifiers, and their
composition. A cond_fn reads a bare time tensor; samplers take it through a guide that says which unit
(:mod:`guided_diffusion.guidance.guides`), or through the ADM facade (train indices).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..timesteps import TimestepRange, TimeUnit

CondFn = Callable[..., torch.Tensor]


def classifier_cond_fn(classifier: Callable, scale: float = 1.0, *, takes_time: bool = True) -> CondFn:
    """ADM's classifier guidance as a cond_fn: scale * grad_x sum_i log softmax(classifier(x, t))[i, y_i].

    ``y`` comes from the sampler's model_kwargs. ``takes_time=False`` calls ``classifier(x)`` (off-the-shelf
    networks with no time input). The classifier's parameters may be frozen: only the gradient with respect
    to x is taken.
    """

    def cond_fn(x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **_) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs target labels: pass y in model_kwargs")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t) if takes_time else classifier(x_in)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[torch.arange(len(logits), device=logits.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def combine_cond_fns(*cond_fns: CondFn) -> CondFn:
    """The sum of several cond_fns' gradients (guidance by a product of likelihoods)."""
    if not cond_fns:
        raise ValueError("combine_cond_fns needs at least one cond_fn")

    def cond_fn(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return sum(fn(x, t, **kwargs) for fn in cond_fns)

    return cond_fn


def restrict_cond_fn(cond_fn: CondFn, active: TimestepRange) -> CondFn:
    """A cond_fn that guides only while the train index t lies in ``active`` (zero gradient elsewhere)."""
    if active.unit != TimeUnit.TRAIN_INDEX:
        raise ValueError("a cond_fn sees train indices: give the range in train_index units, or restrict a "
                         "GradientGuidedDenoiser, which converts any unit")

    def restricted(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        inside = active.contains(t.to(torch.float64))
        if not bool(inside.any()):
            return torch.zeros_like(x)
        grad = cond_fn(x, t, **kwargs)
        return grad * inside.to(grad.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    return restricted
