"""The analytic oracle: a Gaussian mixture with its exact denoiser, noisy classifier and probability-flow ODE.

For x0 ~ sum_k pi_k N(mu_k, C_k) and x_t = alpha x0 + sigma eps, every quantity a diffusion model learns has a
closed form: x_t | k ~ N(alpha mu_k, alpha^2 C_k + sigma^2 I), so the posterior p(k | x_t), the ideal x0 and
eps predictions, the ideal noisy classifier and its gradient are exact, at *any* (alpha, sigma). With C_k =
U_k diag(lam_k) U_k^T every one of them is a few elementwise operations in U_k's eigenbasis, so full
covariances (correlated data), isotropic ones (images) and point masses (C = 0) are all covered.

The oracle speaks every contract of the package: a :class:`~guided_diffusion.denoisers.Denoiser` at any level
(:meth:`GaussianMixture.denoiser`, class-conditional with a null label for classifier-free guidance), a
:class:`~guided_diffusion.guidance.guides.Guide` (:meth:`guide`), ADM-style networks ``model(x, t)`` at
(fractional) train indices of a discrete schedule or continuous times of a log-SNR schedule
(:meth:`ideal_model`, :meth:`continuous_model`) and noisy classifiers (:meth:`ideal_classifier`). For one
component it also gives the exact solution of the probability-flow ODE (:meth:`ode_solution`), which
samplers must approach at their order. So samplers and guidance are checked for correctness, not just
determinism, without training anything.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .denoisers import Denoiser, Prediction
from .denoisers.outputs import ModelOutput, model_output
from .guidance.guides import Guide
from .timesteps import DiscreteSchedule, NoiseLevel


class GaussianMixture:
    """sum_k weights[k] * N(means[k], covariances[k]) in D dimensions.

    ``variances`` (the covariances) are per-component scalars (isotropic, v I; 0 is a point mass) or (D, D)
    matrices. Data tensors may have any shape (N, ...) whose trailing dimensions flatten to D.
    """

    def __init__(self, weights: Sequence[float], means, variances):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.means = torch.as_tensor(np.asarray(means, dtype=np.float64))
        if self.means.ndim != 2 or len(self.weights) != len(self.means):
            raise ValueError("weights (K,) and means (K, D) must describe the same K components")
        if abs(float(self.weights.sum()) - 1) > 1e-9 or bool((self.weights <= 0).any()):
            raise ValueError("weights must be positive and sum to 1")
        self.num_components, self.dim = self.means.shape
        cov = torch.as_tensor(np.asarray(variances, dtype=np.float64))
        if cov.ndim == 1:
            if len(cov) != self.num_components or bool((cov < 0).any()):
                raise ValueError("give one non-negative variance per component")
            self.variances = cov
            self.eigvals = cov[:, None].expand(self.num_components, self.dim).clone()
            self.eigvecs = None  # isotropic: the identity basis
        else:
            if cov.shape != (self.num_components, self.dim, self.dim):
                raise ValueError(f"covariances must be (K, D, D) = ({self.num_components}, {self.dim}, {self.dim})")
            if not torch.allclose(cov, cov.transpose(1, 2)):
                raise ValueError("covariance matrices must be symmetric")
            self.variances = cov
            self.eigvals, self.eigvecs = torch.linalg.eigh(cov)
            if bool((self.eigvals < -1e-12).any()):
                raise ValueError("covariance matrices must be positive semi-definite")
            self.eigvals = self.eigvals.clamp(min=0)

    # ------------------------------------------------------------------------------------------ closed forms
    def covariance(self, k: int) -> np.ndarray:
        """C_k as a (D, D) numpy array."""
        if self.eigvecs is None:
            return float(self.variances[k]) * np.eye(self.dim)
        return self.variances[k].numpy()

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """n draws (float64, shape (n, D)) and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * self.eigvals[labels].sqrt()
        return self.means[labels] + self._from_basis(z, labels), labels

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        if flat.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} values per sample, got {flat.shape[1]}")
        return flat

    def _to_basis(self, v: torch.Tensor) -> torch.Tensor:
        """(N, K, D) vectors in each component's eigenbasis."""
        return v if self.eigvecs is None else torch.einsum("kdj,nkd->nkj", self.eigvecs, v)

    def _from_basis(self, v: torch.Tensor, components: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.eigvecs is None:
            return v
        if components is None:  # (N, K, D)
            return torch.einsum("kdj,nkj->nkd", self.eigvecs, v)
        return torch.einsum("ndj,nj->nd", self.eigvecs[components], v)

    def _terms(self, x_t: torch.Tensor, alpha, sigma):
        """Per component, in its eigenbasis: z = U^T (x - a mu), var = a^2 lam + s^2, and log p(x_t, k)."""
        x = self._flat(x_t)
        a = torch.as_tensor(alpha, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(len(x), 1, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(len(x), 1, 1)
        z = self._to_basis(x[:, None, :] - a * self.means[None])
        var = a ** 2 * self.eigvals[None] + s ** 2  # (N, K, D)
        log_joint = (torch.log(self.weights)[None] - 0.5 * (z ** 2 / var).sum(-1)
                     - 0.5 * torch.log(2 * math.pi * var).sum(-1))
        return a, s, z, var, log_joint

    def log_posterior(self, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log p(k | x_t) for every component, shape (N, K). alpha and sigma are per-sample (N,) or scalars."""
        log_joint = self._terms(x_t, alpha, sigma)[-1]
        return log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def predict(self, x_t: torch.Tensor, alpha, sigma, component: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x_t], E[eps | x_t]) in x_t's shape and dtype, or given the component (long (N,)) of each
        sample: per component x0 = mu + U (a lam / var) z and eps = U (s / var) z."""
        a, s, z, var, log_joint = self._terms(x_t, alpha, sigma)
        x0_k = self.means[None] + self._from_basis(a * self.eigvals[None] / var * z)
        eps_k = self._from_basis(s / var * z)
        if component is None:
            weights = torch.softmax(log_joint, dim=1)[..., None]
            x0, eps = (weights * x0_k).sum(1), (weights * eps_k).sum(1)
        else:
            rows = torch.arange(len(z), device=z.device)
            index = component.long().to(z.device)
            x0, eps = x0_k[rows, index], eps_k[rows, index]
        return x0.reshape(x_t.shape).to(x_t.dtype), eps.reshape(x_t.shape).to(x_t.dtype)

    def eps(self, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """E[eps | x_t] (the ideal eps-prediction)."""
        return self.predict(x_t, alpha, sigma)[1]

    def class_grad(self, x_t: torch.Tensor, alpha, sigma, y: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t) = score_y(x) - score(x), score_k = -U (z / var) of component k."""
        a, s, z, var, log_joint = self._terms(x_t, alpha, sigma)
        score_k = -self._from_basis(z / var)
        post = torch.softmax(log_joint, dim=1)[..., None]
        rows = torch.arange(len(z), device=z.device)
        grad = score_k[rows, y.long().to(z.device)] - (post * score_k).sum(1)
        return grad.reshape(x_t.shape).to(x_t.dtype)

    def ode_solution(self, x: torch.Tensor, level: NoiseLevel, to: NoiseLevel) -> torch.Tensor:
        """The exact probability-flow ODE map of a one-component mixture from ``level`` to ``to``.

        In u = x / alpha and rho = sigma / alpha, du/drho = rho (C + rho^2 I)^-1 (u - mu), so each eigen-
        coordinate of u - mu scales by sqrt((lam + rho_to^2) / (lam + rho^2)).
        """
        if self.num_components != 1:
            raise ValueError("the probability-flow ODE has a closed form for one Gaussian component only")
        u = self._flat(x) / level.alpha.double()[:, None]
        z = self._to_basis((u - self.means[0])[:, None, :])[:, 0]
        rho, rho_to = level.edm_sigma.double()[:, None], to.edm_sigma.double()[:, None]
        z = z * torch.sqrt((self.eigvals[0] + rho_to ** 2) / (self.eigvals[0] + rho ** 2))
        u_to = self.means[0] + self._from_basis(z[:, None, :])[:, 0]
        return (u_to * to.alpha.double()[:, None]).reshape(x.shape).to(x.dtype)

    def classify(self, x0: torch.Tensor) -> torch.Tensor:
        """The Bayes-optimal component of clean samples (needs non-degenerate components)."""
        ones = torch.ones(x0.shape[0], dtype=torch.float64)
        return self.log_posterior(x0, ones, torch.zeros_like(ones)).argmax(dim=1)

    def class_probability_given(self, target: int) -> np.ndarray:
        """P(classify(x0) = k | x0 from component ``target``), estimated from 200k exact draws."""
        gen = torch.Generator().manual_seed(1234)
        z = torch.randn(200_000, self.dim, generator=gen, dtype=torch.float64) * self.eigvals[target].sqrt()
        labels = torch.full((len(z),), target, dtype=torch.long)
        x = self.means[target] + self._from_basis(z, labels)
        return np.bincount(self.classify(x).numpy(), minlength=self.num_components) / len(x)

    # ------------------------------------------------------------------------------------------ contracts
    def denoiser(self, *, label_key: str = "y", label_offset: int = 0, null_label: Optional[int] = None
                 ) -> "MixtureDenoiser":
        """The exact denoiser at any level. With labels in ``model_kwargs[label_key]`` it is the denoiser of
        component ``y - label_offset``, and of the whole mixture where y == ``null_label``."""
        return MixtureDenoiser(self, label_key, label_offset, null_label)

    def guide(self, scale: float = 1.0, *, label_key: str = "y", label_offset: int = 0) -> "MixtureGuide":
        """The exact classifier guide scale * grad log p(y | x_t) at any level."""
        return MixtureGuide(self, scale, label_key, label_offset)

    def _network(self, levels, output) -> callable:
        output = model_output(output)

        def model(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
            level = levels(t)
            x0, eps = self.predict(x, level.alpha.to(x.device), level.sigma.to(x.device))
            if output is ModelOutput.EPS:
                return eps
            if output is ModelOutput.X0:
                return x0
            if output is ModelOutput.V:
                a = level.coefficient(level.alpha, x)
                s = level.coefficient(level.sigma, x)
                return a * eps - s * x0
            raise ValueError(f"the oracle network outputs eps, x0 or v, not {output.value}")

        return model

    def ideal_model(self, train_alphas: np.ndarray, train_sigmas: np.ndarray, output: str = "eps"):
        """A network ``model(x, t)`` of the exact prediction at train indices t of a discrete schedule
        (fractional t: the schedule's interpolated level, the one a DiscreteDenoiser maps off-grid levels to)."""
        schedule = DiscreteSchedule(train_alphas, train_sigmas)
        return self._network(lambda t: schedule.level(t.cpu()), output)

    def continuous_model(self, schedule, output: str = "eps"):
        """A network ``model(x, t)`` of the exact prediction at continuous times t of a log-SNR schedule."""
        def levels(t):
            logsnr = schedule(t.double().cpu())
            return NoiseLevel(alpha=torch.sigmoid(logsnr).sqrt(), sigma=torch.sigmoid(-logsnr).sqrt(), t=t)
        return self._network(levels, output)

    def ideal_classifier(self, train_alphas: np.ndarray, train_sigmas: np.ndarray):
        """A noisy classifier(x, t) whose logits are the exact log p(k | x_t) at (fractional) train indices t."""
        schedule = DiscreteSchedule(train_alphas, train_sigmas)

        def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            level = schedule.level(t.cpu())
            return self.log_posterior(x, level.alpha.to(x.device), level.sigma.to(x.device)).to(x.dtype)

        return classifier


class MixtureDenoiser(Denoiser):
    """:meth:`GaussianMixture.denoiser`: exact x0 and eps at any (alpha, sigma), optionally per component."""

    def __init__(self, mixture: GaussianMixture, label_key: str, label_offset: int, null_label: Optional[int]):
        self.mixture, self.label_key, self.label_offset, self.null_label = mixture, label_key, label_offset, null_label
        self.calls = 0

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> Prediction:
        self.calls += 1
        y = model_kwargs.get(self.label_key)
        alpha, sigma = level.alpha.to(x.device), level.sigma.to(x.device)
        if y is None:
            x0, eps = self.mixture.predict(x, alpha, sigma)
            return Prediction(x0=x0, eps=eps)
        component = (y.long() - self.label_offset).clamp(0, self.mixture.num_components - 1)
        x0, eps = self.mixture.predict(x, alpha, sigma, component)
        if self.null_label is not None:
            null = (y == self.null_label).reshape(-1, *([1] * (x.ndim - 1)))
            if bool(null.any()):
                x0_u, eps_u = self.mixture.predict(x, alpha, sigma)
                x0, eps = torch.where(null, x0_u, x0), torch.where(null, eps_u, eps)
        return Prediction(x0=x0, eps=eps)


class MixtureGuide(Guide):
    """:meth:`GaussianMixture.guide`: scale * grad log p(y | x_t), exact at any level."""

    def __init__(self, mixture: GaussianMixture, scale: float, label_key: str, label_offset: int):
        self.mixture, self.scale, self.label_key, self.label_offset = mixture, scale, label_key, label_offset

    def __call__(self, x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> torch.Tensor:
        y = model_kwargs[self.label_key].long() - self.label_offset
        return self.scale * self.mixture.class_grad(x, level.alpha.to(x.device), level.sigma.to(x.device), y)


__all__ = ["GaussianMixture", "MixtureDenoiser", "MixtureGuide"]
