"""A trajectory: the ordered noise levels a sampler visits, with the posterior of each step precomputed.

Every process here is x_t = alpha_t * x0 + sigma_t * eps, so a list of (alpha, sigma) pairs is all a sampler
needs. Level 0 is the least noisy; sampling walks K-1, ..., 0 and then to the clean data (alpha 1, sigma 0).
All arrays are float64 numpy, computed once, and cast per step (as ADM does).
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .timesteps import NoiseLevel, TimeUnit


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


class Trajectory:
    """K noise levels, least noisy first, with their per-step posterior arrays.

    :param alphas, sigmas: float64 arrays of shape (K,), sigma increasing with the index.
    :param times: the process time of each level, in ``unit`` (discrete diffusion: the original train index).
    :param num_train_steps: T of a discrete process (lets levels convert to TimeUnit.TIME).
    """

    def __init__(self, alphas: Sequence[float], sigmas: Sequence[float], times: Sequence[float],
                 unit: TimeUnit = TimeUnit.TRAIN_INDEX, num_train_steps: Optional[int] = None):
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

        # Neighbours of each level: "prev" is one step less noisy (clean data before level 0), "next" one
        # step noisier (pure noise after level K-1); DDIM steps towards either.
        self.prev_alphas = np.append(1.0, self.alphas[:-1])
        self.prev_sigmas = np.append(0.0, self.sigmas[:-1])
        self.next_alphas = np.append(self.alphas[1:], 0.0)
        self.next_sigmas = np.append(self.sigmas[1:], 1.0)
        post = posterior_coefficients(self.alphas, self.sigmas, self.prev_alphas, self.prev_sigmas)
        self.betas = post["beta"]
        self.posterior_mean_coef_x0 = post["coef_x0"]
        self.posterior_mean_coef_xt = post["coef_xt"]
        self.posterior_variance = post["variance"]
        # The last step (to clean data) has zero posterior variance; its log is clipped to the next step's,
        # and the "large" variance uses that value instead of beta_0 (ADM's convention).
        first = self.posterior_variance[1] if len(self.alphas) > 1 else self.betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.large_variance = np.append(first, self.betas[1:])
        self.log_large_variance = np.log(self.large_variance)
        self.log_betas = np.log(self.betas)
        self._device_arrays: dict = {}

    def __len__(self) -> int:
        return len(self.alphas)

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
