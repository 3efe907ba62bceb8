"""A trajectory: the ordered noise levels a sampler visits, with the posterior of each step precomputed.

Every process here is x_t = alpha_t * x0 + sigma_t * eps, so a list of (alpha, sigma) pairs is all a sampler
needs. Level 0 is the least noisy; sampling walks K-1, ..., 0 and then to the *final* level (clean data,
alpha 1 and sigma 0, unless the trajectory says otherwise: Stable Diffusion's DDIM ends at alpha_bar_0).
All arrays are float64 numpy, computed once, and cast per step (as ADM does).
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .timesteps import DiscreteSchedule, NoiseLevel, TimeUnit


def posterior_coefficients(alpha_t: np.ndarray, sigma_t: np.ndarray, alpha_s: np.ndarray,
                           sigma_s: np.ndarray) -> Dict[str, np.ndarray]:
    """q(x_s | x_t, x0) for a less noisy level s: mean = coef_x0 * x0 + coef_xt * x_t, and its variance.

    With a_ts = alpha_t / alpha_s and beta_ts = sigma_t^2 - a_ts^2 sigma_s^2 (the variance of x_t given x_s):
    coef_x0 = alpha_s beta_ts / sigma_t^2, coef_xt = a_ts sigma_s^2 / sigma_t^2,
    variance = beta_ts sigma_s^2 / sigma_t^2. For DDPM (alpha^2 = abar) this is ADM's posterior.
    """
    a_ts = alpha_t / alpha_s
    beta_ts = sigma_t ** 2 - a_ts ** 2 * sigma_s ** 2
    return {
        "beta": beta_ts,
        "coef_x0": alpha_s * beta_ts / sigma_t ** 2,
        "coef_xt": a_ts * sigma_s ** 2 / sigma_t ** 2,
        "variance": beta_ts * sigma_s ** 2 / sigma_t ** 2,
    }


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
                  ) -> np.ndarray:
    """EDM's discretisation (Karras et al. 2022, eq. 5), noisiest first, without the final 0:
    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in float64."""
    if num_steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need num_steps >= 1 and 0 < sigma_min < sigma_max, got {num_steps}, {sigma_min}, "
                         f"{sigma_max}")
    i = np.arange(num_steps, dtype=np.float64)
    ramp = i / max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def is_variance_preserving(alphas: np.ndarray, sigmas: np.ndarray) -> bool:
    return bool(np.allclose(alphas ** 2 + sigmas ** 2, 1.0, rtol=0, atol=1e-6))


class Trajectory:
    """K noise levels, least noisy first, with their per-step posterior arrays.

    :param alphas, sigmas: float64 arrays of shape (K,), sigma / alpha increasing with the index.
    :param times: the process time of each level, in ``unit`` (discrete diffusion: the original train index).
    :param num_train_steps: T of a discrete process (lets levels convert to TimeUnit.TIME).
    :param final: (alpha, sigma) of the level sampling ends on after level 0 and inversion starts from;
        clean data (1, 0) by default.
    :param beyond: (alpha, sigma) one step noisier than level K-1, where a reverse (inversion) step from the
        last level goes: pure noise (0, 1) for variance-preserving trajectories (ADM's alphas_cumprod_next),
        none otherwise (a variance-exploding process has no finite pure-noise level).
    :param prior_std: the standard deviation of the start noise at level K-1: 1 for variance-preserving
        trajectories (ADM draws N(0, I)), sigma_{K-1} otherwise (EDM starts at sigma_max * N(0, I)).
    """

    def __init__(self, alphas: Sequence[float], sigmas: Sequence[float], times: Sequence[float],
                 unit: TimeUnit = TimeUnit.TRAIN_INDEX, num_train_steps: Optional[int] = None, *,
                 final: Tuple[float, float] = (1.0, 0.0), beyond: Optional[Tuple[float, float]] = None,
                 prior_std: Optional[float] = None):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.times = np.asarray(times)
        self.unit = TimeUnit(unit)
        self.num_train_steps = num_train_steps
        if not (self.alphas.shape == self.sigmas.shape == self.times.shape) or self.alphas.ndim != 1:
            raise ValueError("alphas, sigmas and times must be 1-D arrays of one length")
        if len(self.alphas) == 0:
            raise ValueError("a trajectory needs at least one noise level")
        if np.any(np.diff(self.sigmas / self.alphas) <= 0):
            raise ValueError("noise levels must strictly increase with the index (level 0 least noisy)")
        self.final = (float(final[0]), float(final[1]))
        if self.final[0] <= 0 or self.final[1] < 0 or self.final[1] / self.final[0] >= self.sigmas[0] / self.alphas[0]:
            raise ValueError(f"the final level {self.final} must be less noisy than level 0")
        self.variance_preserving = is_variance_preserving(self.alphas, self.sigmas)
        if beyond is None and self.variance_preserving:
            beyond = (0.0, 1.0)
        self.beyond = None if beyond is None else (float(beyond[0]), float(beyond[1]))
        if prior_std is None:
            prior_std = 1.0 if self.variance_preserving else float(self.sigmas[-1])
        self.prior_std = float(prior_std)

        # Neighbours of each level: "prev" is one step less noisy (the final level before level 0), "next"
        # one step noisier (``beyond`` after level K-1, NaN when there is none); DDIM steps towards either.
        self.prev_alphas = np.append(self.final[0], self.alphas[:-1])
        self.prev_sigmas = np.append(self.final[1], self.sigmas[:-1])
        nan = (np.nan, np.nan)
        self.next_alphas = np.append(self.alphas[1:], (self.beyond or nan)[0])
        self.next_sigmas = np.append(self.sigmas[1:], (self.beyond or nan)[1])
        post = posterior_coefficients(self.alphas, self.sigmas, self.prev_alphas, self.prev_sigmas)
        self.betas = post["beta"]
        self.posterior_mean_coef_x0 = post["coef_x0"]
        self.posterior_mean_coef_xt = post["coef_xt"]
        self.posterior_variance = post["variance"]
        if self.posterior_variance[0] > 0:  # the final level is noisy: every step has a proper posterior
            first_log, first_large = self.posterior_variance[0], self.betas[0]
        else:
            # The last step to clean data has zero posterior variance; its log is clipped to the next step's,
            # and the "large" variance uses that value instead of beta_0 (ADM's convention).
            first_log = first_large = self.posterior_variance[1] if len(self.alphas) > 1 else self.betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first_log, self.posterior_variance[1:]))
        self.large_variance = np.append(first_large, self.betas[1:])
        self.log_large_variance = np.log(self.large_variance)
        self.log_betas = np.log(self.betas)
        self._device_arrays: dict = {}

    @classmethod
    def variance_exploding(cls, edm_sigmas: Sequence[float], **kwargs) -> "Trajectory":
        """x = x0 + sigma * eps at the given EDM sigmas (any order; sorted here), time in EDM_SIGMA units."""
        sigmas = np.sort(np.asarray(edm_sigmas, dtype=np.float64))
        return cls(np.ones_like(sigmas), sigmas, sigmas, TimeUnit.EDM_SIGMA, **kwargs)

    @classmethod
    def karras(cls, num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               **kwargs) -> "Trajectory":
        """EDM's sigma grid (:func:`karras_sigmas`) as a variance-exploding trajectory ending at clean data."""
        return cls.variance_exploding(karras_sigmas(num_steps, sigma_min, sigma_max, rho), **kwargs)

    def __len__(self) -> int:
        return len(self.alphas)

    @property
    def schedule(self) -> DiscreteSchedule:
        """These levels as a :class:`DiscreteSchedule` (index = level), built once: what maps any noise level
        to this trajectory's (train) index when it is a model's training process."""
        if getattr(self, "_schedule", None) is None:
            self._schedule = DiscreteSchedule(self.alphas, self.sigmas)
        return self._schedule

    def take(self, array: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """array[index] on index's device, keeping the array's dtype (float64 for coefficients; float32 on
        Apple's MPS, which has no float64).

        Each array is copied to a device once and cached for as long as the array lives, so sampling steps
        index a resident tensor instead of transferring the table again.
        """
        key = (id(array), index.device)
        entry = self._device_arrays.get(key)
        if entry is None or entry[0]() is not array:
            values = torch.tensor(array)  # a copy: a view would keep the array alive
            if index.device.type == "mps" and values.dtype == torch.float64:
                values = values.float()
            forget = weakref.ref(array, lambda _, k=key, cache=self._device_arrays: cache.pop(k, None))
            entry = (forget, values.to(index.device))
            self._device_arrays[key] = entry
        return entry[1][index.long()]

    def extract(self, array: np.ndarray, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """array[index] as ``like``'s dtype, shaped to broadcast over it."""
        return NoiseLevel.coefficient(self.take(array, index), like)

    def level(self, index: torch.Tensor) -> NoiseLevel:
        """The levels at per-sample indices ``index`` (long tensor of shape (N,))."""
        return NoiseLevel(
            alpha=self.take(self.alphas, index), sigma=self.take(self.sigmas, index),
            t=self.take(self.times, index), unit=self.unit, step=len(self) - 1 - index.long(),
            num_steps=len(self), num_train_steps=self.num_train_steps,
        )

    def final_level(self, batch_size: int, device=None) -> NoiseLevel:
        """The final level (after level 0) for a batch, in EDM_SIGMA units (it is on no process grid)."""
        alpha = torch.full((batch_size,), self.final[0], dtype=torch.float64, device=device)
        return NoiseLevel.at(alpha, torch.full_like(alpha, self.final[1]))
