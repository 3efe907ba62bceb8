"""The denoiser contract: every model family, wrapped once, maps (x_t, noise level) to a :class:`Prediction`.

A denoiser is called as ``denoiser(x_t, level, **model_kwargs)`` where ``level`` is a
:class:`~guided_diffusion.timesteps.NoiseLevel` (x_t = alpha * x0 + sigma * eps) with *any* (alpha, sigma):
on the model's own training grid or not, variance-preserving or exploding. A base denoiser computes the
network's own time input and input scale inside (``model_time``), runs the network, and returns predictions
of x0 and eps (plus the raw learned-variance channels where the model has them). Samplers and guidance only
see this interface, so a new model family needs one wrapper and a new sampler works with every family and
every guidance method.

Each denoiser also says what the network outputs (``output``, a
:class:`~guided_diffusion.denoisers.outputs.ModelOutput`), whether its x0 should be clipped to [-1, 1] when
sampling (``clip_denoised``: pixel models yes, latent and EDM models no), and which network it wraps
(``network``, reachable through any stack of wrappers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn

from ..timesteps import NoiseLevel, TimeUnit


@dataclass(frozen=True)
class Prediction:
    """What a denoiser says about x_t: consistent estimates of x0 and eps, and optionally a learned variance.

    ``var_values`` holds the model's variance channels as output: a log-variance when ``var_kind`` is
    "learned", or v in [-1, 1] interpolating between the posterior and the prior log-variance when it is
    "learned_range" (ADM / improved DDPM).

    ``x0_final`` says that x0 was already post-processed inside the denoiser stack (classifier-free guidance on
    the posterior mean clips each branch before combining them), so samplers must not clip it again: a
    guided x0 may legitimately leave [-1, 1]. Deriving a new prediction (``with_x0``, ``with_eps``) clears it.
    """

    x0: torch.Tensor
    eps: torch.Tensor
    var_values: Optional[torch.Tensor] = None
    var_kind: Optional[str] = None
    x0_final: bool = False

    @staticmethod
    def from_eps(x: torch.Tensor, level: NoiseLevel, eps: torch.Tensor, **extra) -> "Prediction":
        """x0 = x / alpha - eps * sigma / alpha (coefficients in float64, then cast)."""
        inv_alpha, sigma_over_alpha = 1.0 / level.alpha, level.sigma / level.alpha
        x0 = x * level.coefficient(inv_alpha, x) - eps * level.coefficient(sigma_over_alpha, x)
        return Prediction(x0=x0, eps=eps, **extra)

    @staticmethod
    def from_x0(x: torch.Tensor, level: NoiseLevel, x0: torch.Tensor, **extra) -> "Prediction":
        """eps = (x / alpha - x0) / (sigma / alpha)."""
        inv_alpha, sigma_over_alpha = 1.0 / level.alpha, level.sigma / level.alpha
        eps = (x * level.coefficient(inv_alpha, x) - x0) / level.coefficient(sigma_over_alpha, x)
        return Prediction(x0=x0, eps=eps, **extra)

    @staticmethod
    def from_v(x: torch.Tensor, level: NoiseLevel, v: torch.Tensor, **extra) -> "Prediction":
        """v = alpha eps - sigma x0 (alpha^2 + sigma^2 = 1): x0 = alpha x - sigma v, eps = sigma x + alpha v."""
        a, s = level.coefficient(level.alpha, x), level.coefficient(level.sigma, x)
        return Prediction(x0=a * x - s * v, eps=s * x + a * v, **extra)

    def with_x0(self, x: torch.Tensor, level: NoiseLevel, x0: torch.Tensor) -> "Prediction":
        """The same prediction with x0 replaced and eps re-derived from it (e.g. after clipping)."""
        return Prediction.from_x0(x, level, x0, var_values=self.var_values, var_kind=self.var_kind)

    def with_eps(self, x: torch.Tensor, level: NoiseLevel, eps: torch.Tensor) -> "Prediction":
        """The same prediction with eps replaced and x0 re-derived from it (e.g. after a score shift)."""
        return Prediction.from_eps(x, level, eps, var_values=self.var_values, var_kind=self.var_kind)

    def map(self, fn) -> "Prediction":
        """Apply ``fn`` to every tensor field (used to combine predictions linearly)."""
        return replace(self, x0=fn(self.x0), eps=fn(self.eps),
                       var_values=None if self.var_values is None else fn(self.var_values))


def shift_score(pred: Prediction, x: torch.Tensor, level: NoiseLevel, grad: torch.Tensor) -> Prediction:
    """Gradient guidance as a score shift: eps' = eps - sigma * grad, x0' re-derived from eps' (not clipped).

    With grad = s * d log p(y | x_t) / dx_t this is the score of p(x_t) p(y | x_t)^s (ADM's DDIM guidance).
    """
    return pred.with_eps(x, level, pred.eps - level.coefficient(level.sigma, x) * grad)


def match_level(x: torch.Tensor, level: NoiseLevel, own_alpha: torch.Tensor) -> torch.Tensor:
    """x = alpha x0 + sigma eps rescaled to the network's own level with the same sigma / alpha.

    A network trained on x_m = alpha_m x0 + sigma_m eps sees x * alpha_m / alpha; x0 and eps are the same at
    both, so the prediction holds for the caller's x too.
    """
    return x * level.coefficient(own_alpha / level.alpha, x)


class Denoiser(ABC):
    """Base of all denoisers: a callable ``(x, level, **model_kwargs) -> Prediction``.

    ``output`` names what the network outputs; ``time_unit`` names the unit of the network's own time;
    ``clip_denoised`` whether samplers clip its x0 to [-1, 1] by default (pixel data).
    """

    output: str = "eps"
    time_unit: TimeUnit = TimeUnit.TRAIN_INDEX
    clip_denoised: bool = False

    @property
    def network(self) -> Optional[nn.Module]:
        """The wrapped network (None for analytic denoisers)."""
        return None

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        """The time input the network receives at this level (in ``time_unit``)."""
        return level.time_in(self.time_unit)

    @abstractmethod
    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        """Predict x0 and eps from x_t at ``level``."""


class DenoiserWrapper(Denoiser):
    """A denoiser that modifies another one (guidance, feature injection ...); delegates everything else."""

    def __init__(self, inner: Denoiser):
        self.inner = inner

    @property
    def output(self) -> str:  # type: ignore[override]
        return self.inner.output

    @property
    def time_unit(self) -> TimeUnit:  # type: ignore[override]
        return self.inner.time_unit

    @property
    def clip_denoised(self) -> bool:  # type: ignore[override]
        return self.inner.clip_denoised

    @property
    def network(self) -> Optional[nn.Module]:
        return self.inner.network

    def model_time(self, level: NoiseLevel) -> torch.Tensor:
        return self.inner.model_time(level)

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        return self.inner(x, level, **model_kwargs)
