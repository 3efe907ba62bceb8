"""An analytic data set: an isotropic Gaussian mixture, with its exact denoiser and noisy classifier.

For x0 ~ sum_k pi_k N(mu_k, v_k I) and x_t = alpha x0 + sigma eps, every quantity a diffusion model learns
has a closed form: x_t | k ~ N(alpha mu_k, (alpha^2 v_k + sigma^2) I), so the posterior p(k | x_t), the
ideal eps-prediction and the ideal noisy classifier are exact. Samplers and guidance can therefore be
checked for correctness (not just determinism) without training anything.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch


class GaussianMixture:
    """sum_k weights[k] * N(means[k], variances[k] * I) in D dimensions.

    Data tensors may have any shape (N, ...) whose trailing dimensions flatten to D.
    """

    def __init__(self, weights: Sequence[float], means: Sequence[Sequence[float]], variances: Sequence[float]):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.variances = torch.as_tensor(variances, dtype=torch.float64)
        if self.means.ndim != 2 or not (len(self.weights) == len(self.means) == len(self.variances)):
            raise ValueError("weights (K,), means (K, D) and variances (K,) must describe the same K components")
        if abs(float(self.weights.sum()) - 1) > 1e-9 or bool((self.weights <= 0).any()):
            raise ValueError("weights must be positive and sum to 1")
        self.dim = self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """n draws (float64, shape (n, D)) and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[labels] + noise * self.variances[labels, None].sqrt(), labels

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        if flat.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} values per sample, got {flat.shape[1]}")
        return flat

    def log_posterior(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p(k | x_t) for every component, shape (N, K). alpha and sigma are per-sample, shape (N,)."""
        x = self._flat(x_t)
        alpha, sigma = alpha.double()[:, None], sigma.double()[:, None]
        var = alpha ** 2 * self.variances[None] + sigma ** 2  # (N, K)
        sq = ((x[:, None, :] - alpha[:, :, None] * self.means[None]) ** 2).sum(-1)
        log_joint = torch.log(self.weights)[None] - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def eps(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[eps | x_t]: the posterior-weighted eps of each component, sigma (x - alpha mu_k) / var_k."""
        x = self._flat(x_t)
        a, s = alpha.double()[:, None], sigma.double()[:, None]
        var = a ** 2 * self.variances[None] + s ** 2
        weights = self.log_posterior(x_t, alpha, sigma).exp()
        per_component = s[:, :, None] * (x[:, None, :] - a[:, :, None] * self.means[None]) / var[:, :, None]
        return (weights[:, :, None] * per_component).sum(1).reshape(x_t.shape).to(x_t.dtype)

    def classify(self, x0: torch.Tensor) -> torch.Tensor:
        """The Bayes-optimal label of clean samples."""
        ones = torch.ones(x0.shape[0], dtype=torch.float64)
        return self.log_posterior(x0, ones, torch.zeros_like(ones)).argmax(dim=1)

    def class_probability_given(self, target: int) -> np.ndarray:
        """P(classify(x0) = k | x0 from component ``target``), estimated from 200k exact draws."""
        gen = torch.Generator().manual_seed(1234)
        x = self.means[target] + torch.randn(200_000, self.dim, generator=gen, dtype=torch.float64) * \
            self.variances[target].sqrt()
        return np.bincount(self.classify(x).numpy(), minlength=len(self.weights)) / len(x)

    def ideal_model(self, train_alphas: np.ndarray, train_sigmas: np.ndarray):
        """A model(x, t, **kwargs) returning the exact eps for discrete diffusion at train indices t."""
        alphas, sigmas = torch.from_numpy(train_alphas), torch.from_numpy(train_sigmas)

        def model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
            index = t.long().cpu()
            return self.eps(x, alphas[index], sigmas[index]).to(x.device)

        return model

    def ideal_classifier(self, train_alphas: np.ndarray, train_sigmas: np.ndarray):
        """A noisy classifier(x, t) whose logits are the exact log p(k | x_t) at train indices t."""
        alphas, sigmas = torch.from_numpy(train_alphas), torch.from_numpy(train_sigmas)

        def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            index = t.long().cpu()
            return self.log_posterior(x, alphas[index], sigmas[index]).to(x.dtype)

        return classifier
