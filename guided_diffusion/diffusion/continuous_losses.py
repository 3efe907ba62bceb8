"""Training losses of the continuous log-SNR process: the reweighted x0-MSE and the KL bound in bits/dim.

The MSE is always a weight w(lambda) times the x0-MSE of the *converted* prediction, whatever the network
outputs (VDPM compared its target with the raw output for three of the four weights, which is only right when
the output type happens to match the weight):

=================  =================  ==========================================
reweight type      weight              evaluated as (same value, better rounding)
=================  =================  ==========================================
constant           1                   x0-MSE
snr                SNR = e^lambda      eps-MSE
truncated_snr      max(1, SNR)         max(x0-MSE, eps-MSE)
alpha2             1 + SNR = 1/sigma^2 x0-MSE + eps-MSE  (= v-MSE)
=================  =================  ==========================================

The identities hold because x0 and eps predictions are consistent (x_t = alpha x0 + sigma eps for both the
truth and the prediction), so eps - eps_hat = -(alpha / sigma) (x0 - x0_hat). Evaluating each weight in the
space where it is natural avoids multiplying a tiny x0 error by SNR ~ 5e8 at lambda = 20.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from ..denoisers import Prediction
from ..nn import mean_flat
from .losses import discretized_gaussian_log_likelihood, normal_kl

REWEIGHT_TYPES = ("constant", "snr", "truncated_snr", "alpha2")
REWEIGHT_ALIASES = {"snr_trunc": "truncated_snr", "snr_1plus": "alpha2"}
LOSS_TYPES = ("mse", "kl")


def canonical_reweight_type(name: str) -> str:
    """The canonical reweighting name; VDPM's 2024 names ``snr_trunc`` and ``snr_1plus`` are aliases."""
    name = REWEIGHT_ALIASES.get(name, name)
    if name not in REWEIGHT_TYPES:
        raise ValueError(f"unknown reweight type {name!r}; choose one of {', '.join(REWEIGHT_TYPES)} "
                         "(or snr_trunc, snr_1plus)")
    return name


def loss_weight(logsnr: torch.Tensor, reweight_type: str) -> torch.Tensor:
    """w(lambda) multiplying the x0-MSE: 1, SNR, max(1, SNR) or 1 + SNR (float64)."""
    reweight_type = canonical_reweight_type(reweight_type)
    snr = torch.exp(torch.as_tensor(logsnr, dtype=torch.float64))
    if reweight_type == "constant":
        return torch.ones_like(snr)
    if reweight_type == "snr":
        return snr
    if reweight_type == "truncated_snr":
        return snr.clamp(min=1.0)
    return 1.0 + snr


def mse_terms(pred: Prediction, x0: torch.Tensor, noise: torch.Tensor, reweight_type: str
              ) -> Dict[str, torch.Tensor]:
    """Per-sample reweighted MSE ("loss") with its parts "x0_mse" and "eps_mse" (means over C*H*W)."""
    reweight_type = canonical_reweight_type(reweight_type)
    x0_mse = mean_flat((x0 - pred.x0) ** 2)
    eps_mse = mean_flat((noise - pred.eps) ** 2)
    loss = {"constant": lambda: x0_mse, "snr": lambda: eps_mse,
            "truncated_snr": lambda: torch.maximum(x0_mse, eps_mse),
            "alpha2": lambda: x0_mse + eps_mse}[reweight_type]()
    return {"loss": loss, "x0_mse": x0_mse, "eps_mse": eps_mse}


def _mean(coef: Dict[str, torch.Tensor], x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    return (coef["coef_xt"].to(x_t.dtype).reshape(shape) * x_t
            + coef["coef_x0"].to(x_t.dtype).reshape(shape) * x0)


def kl_terms(x0: torch.Tensor, x_t: torch.Tensor, pred_x0: torch.Tensor, true_posterior: Dict[str, torch.Tensor],
             model_posterior: Dict[str, torch.Tensor], first_step: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-sample variational-bound term in bits/dim.

    ``true_posterior`` / ``model_posterior``: dicts with per-sample float64 ``coef_xt``, ``coef_x0`` and
    ``logvar`` (fixed_small for the truth; the model's variance type for p). Where ``first_step`` (bool (N,))
    the term is the decoder NLL, else the KL of the two Gaussians; both are means over C*H*W divided by ln 2.

    The decoder is the original's (VDPM's ``_loss_term_bpd``, 2023 and 2024 alike): a discretised Gaussian
    centred on the predicted x0 (unclipped, as in training) with log-scale half the model's log-variance of the
    step to s = 0. It is not centred on the posterior mean coef_xt x_t + coef_x0 x0_hat: with logsnr_max 20 the
    two differ by about e^-18 and the choice is invisible, but for a schedule whose lambda(0) is small the
    posterior mean shrinks x0_hat by alpha_0 and mixes in x_t, and the bound would no longer be the original's.
    """
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    true_mean = _mean(true_posterior, x_t, x0)
    model_mean = _mean(model_posterior, x_t, pred_x0)
    true_logvar = true_posterior["logvar"].to(x_t.dtype).reshape(shape)
    model_logvar = model_posterior["logvar"].to(x_t.dtype).reshape(shape)
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, means=pred_x0, log_scales=(0.5 * model_logvar).expand_as(x0))
    nll = mean_flat(nll) / math.log(2.0)
    return {"loss": torch.where(first_step.to(x_t.device), nll, kl), "kl": kl, "decoder_nll": nll}


def prior_bpd(x0: torch.Tensor, alpha_1: torch.Tensor, sigma_1: torch.Tensor) -> torch.Tensor:
    """KL(q(x_1 | x0) || N(0, I)) in bits/dim with (alpha_1, sigma_1) per sample: how far t = 1 is from noise."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    mean = alpha_1.to(x0.dtype).reshape(shape) * x0
    logvar = (2 * torch.log(sigma_1)).to(x0.dtype).reshape(shape).expand_as(x0)
    return mean_flat(normal_kl(mean, logvar, 0.0, 0.0)) / math.log(2.0)
