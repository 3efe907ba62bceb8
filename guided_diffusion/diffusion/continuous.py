"""The continuous-time log-SNR process of the v-objective diffusion model (VDPM, Salimans & Ho style).

Time t in [0, 1] (t = 0 clean, t = 1 noise) maps to a log signal-to-noise ratio lambda(t), decreasing from
logsnr_max to logsnr_min; alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda), x_t = alpha x0 + sigma eps.
For s < t (lambda_s > lambda_t) let r = exp(lambda_t - lambda_s) = SNR_t / SNR_s in (0, 1); then

    q(x_s | x_t, x0) = N(r alpha_s / alpha_t * x_t + (1 - r) alpha_s * x0, (1 - r) sigma_s^2)

and the step variance of p(x_s | x_t) is (1 - r) sigma_s^2 (fixed_small, the posterior), (1 - r) sigma_t^2
(fixed_large, DDPM's beta) or their geometric interpolation with weight ``intp_frac`` on large (fixed_medium).
Everything that involves 1 - r or log-SNR differences is computed in float64 through log1mexp / logsigmoid.

The process plugs into the shared machinery: :meth:`ContinuousDiffusion.denoiser` wraps a network into the
denoiser contract (continuous time, ``TimeUnit.TIME``, any level accepted through the schedule's inverse),
:meth:`ContinuousDiffusion.trajectory` gives the sampling grid t_i = (i + 1) / N as an ordinary
:class:`~guided_diffusion.trajectory.Trajectory`, and the samplers and guidance wrappers of the package run on
them unchanged (VDPM's own sampling recipe is :func:`guided_diffusion.vdpm.sample_vdpm`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np
import torch

from ..denoisers import Denoiser
from ..denoisers.continuous import ContinuousDenoiser, canonical_out_type
from ..labels import drop_labels
from ..timesteps import NoiseLevel, TimeUnit
from ..trajectory import Trajectory
from .continuous_losses import LOSS_TYPES, canonical_reweight_type, kl_terms, mse_terms, prior_bpd

SCHEDULES = ("linear", "sigmoid", "cosine", "legacy")
VAR_TYPES = ("fixed_small", "fixed_large", "fixed_medium")

# DDPM's linear betas (1e-4 .. 0.02 over 1000 steps) as 1 - beta(t) = lerp(0.9999, 0.98, t).
_LEGACY_FROM, _LEGACY_TO, _LEGACY_STEPS = 1.0 - 1e-4, 1.0 - 0.02, 1000


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0 without cancellation (Maechler's switch at -ln 2)."""
    x = torch.as_tensor(x)
    if bool((x > 0).any()):
        raise ValueError("log1mexp needs x <= 0")
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _float64(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    # MPS has no float64: schedules are evaluated on the CPU there.
    return t.to(device="cpu" if t.device.type == "mps" else t.device, dtype=torch.float64)


def _lerp(a: float, b: float, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


class LogSNRSchedule:
    """lambda(t) for t in [0, 1]: ``linear``, ``sigmoid``, ``cosine`` or ``legacy``.

    The first three map t affinely onto [g(logsnr_max), g(logsnr_min)] for a monotone g and invert g:
    ``linear`` g = sigmoid (alpha^2 falls linearly in t), ``sigmoid`` g = identity (lambda linear in t),
    ``cosine`` g(lambda) = (2/pi) atan(e^(-lambda/2)) (alpha^2 = cos^2(pi t'/2), no offset, truncated to
    [logsnr_min, logsnr_max]). ``legacy`` is DDPM's linear betas in continuous time,
    log alpha_bar(t) = 1000 * int_0^t log(1 - beta(u)) du, and ignores logsnr_min / logsnr_max
    (lambda(0) = 20.72, lambda(1) = -10.12): the original's 2024 version. Its 2023 version rescaled that
    log alpha_bar to end at -20 (lambda from 20.0 to -20.0), which is not reproduced here.
    """

    def __init__(self, name: str = "cosine", logsnr_min: float = -20.0, logsnr_max: float = 20.0):
        if name not in SCHEDULES:
            raise ValueError(f"unknown log-SNR schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        if name != "legacy" and not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be below logsnr_max ({logsnr_max})")
        self.name = name
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    def __call__(self, t) -> torch.Tensor:
        """lambda(t) as float64 (on t's device, the CPU for MPS tensors)."""
        t = _float64(t)
        lo, hi = self.logsnr_min, self.logsnr_max
        if self.name == "sigmoid":
            return _lerp(hi, lo, t)
        if self.name == "linear":
            # logit of alpha^2 = lerp(sigmoid(hi), sigmoid(lo), t); 1 - alpha^2 is interpolated directly so
            # that lambda(0) is logsnr_max to the last bit instead of logit(1 - 2e-9).
            alpha2 = _lerp(_sigmoid(hi), _sigmoid(lo), t)
            sigma2 = _lerp(_sigmoid(-hi), _sigmoid(-lo), t)
            return torch.log(alpha2) - torch.log(sigma2)
        if self.name == "cosine":
            t_from = 2 / math.pi * math.atan(math.exp(-hi / 2))
            t_to = 2 / math.pi * math.atan(math.exp(-lo / 2))
            logsnr = -2 * torch.log(torch.tan(math.pi / 2 * _lerp(t_from, t_to, t)))
            return logsnr.clamp(lo, hi)
        x = _lerp(_LEGACY_FROM, _LEGACY_TO, t)
        slope = _LEGACY_TO - _LEGACY_FROM
        log_alpha_bar = _LEGACY_STEPS / slope * (x * torch.log(x) - x
                                                 - _LEGACY_FROM * math.log(_LEGACY_FROM) + _LEGACY_FROM)
        # The 1e-9 keeps lambda(0) finite (alpha_bar(0) = 1); it fixes lambda(0) = -log(1e-9) = 20.72.
        return log_alpha_bar - log1mexp(log_alpha_bar - 1e-9)

    def inverse(self, logsnr) -> torch.Tensor:
        """The time t in [0, 1] with lambda(t) = logsnr (float64; clamped to [0, 1] outside the schedule's
        range). Closed forms for linear, sigmoid and cosine; bisection to float64 precision for legacy."""
        logsnr = _float64(logsnr)
        lo, hi = self.logsnr_min, self.logsnr_max
        if self.name == "sigmoid":
            t = (logsnr - hi) / (lo - hi)
        elif self.name == "linear":
            t = (torch.sigmoid(logsnr) - _sigmoid(hi)) / (_sigmoid(lo) - _sigmoid(hi))
        elif self.name == "cosine":
            t_from = 2 / math.pi * math.atan(math.exp(-hi / 2))
            t_to = 2 / math.pi * math.atan(math.exp(-lo / 2))
            t = (2 / math.pi * torch.atan(torch.exp(-logsnr / 2)) - t_from) / (t_to - t_from)
        else:  # legacy: lambda decreases monotonically in t
            low, high = torch.zeros_like(logsnr), torch.ones_like(logsnr)
            for _ in range(64):
                mid = (low + high) / 2
                above = self(mid) > logsnr
                low, high = torch.where(above, mid, low), torch.where(above, high, mid)
            t = (low + high) / 2
        return t.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"LogSNRSchedule({self.name!r}, logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max})"


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def alpha_sigma(logsnr: torch.Tensor):
    """(alpha, sigma) = (sqrt(sigmoid(lambda)), sqrt(sigmoid(-lambda))) in float64."""
    logsnr = _float64(logsnr)
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def _check_order(logsnr_t: torch.Tensor, logsnr_s: torch.Tensor) -> torch.Tensor:
    log_r = logsnr_t - logsnr_s
    if bool((log_r >= 0).any()):
        raise ValueError("the posterior needs s less noisy than t (logsnr_s > logsnr_t)")
    return log_r


def posterior_from_logsnr(logsnr_t, logsnr_s, var_type: str = "fixed_small",
                          intp_frac: float = 0.0) -> Dict[str, torch.Tensor]:
    """q(x_s | x_t, x0): float64 ``coef_xt``, ``coef_x0`` (mean = coef_xt x_t + coef_x0 x0) and ``logvar``.

    ``var_type`` picks the log-variance: fixed_small log((1 - r) sigma_s^2), fixed_large log((1 - r) sigma_t^2),
    fixed_medium (1 - intp_frac) * small + intp_frac * large.
    """
    if var_type not in VAR_TYPES:
        raise ValueError(f"unknown variance type {var_type!r}; choose one of {', '.join(VAR_TYPES)}")
    if not 0.0 <= intp_frac <= 1.0:
        raise ValueError(f"intp_frac must lie in [0, 1], got {intp_frac}")
    logsnr_t, logsnr_s = _float64(logsnr_t), _float64(logsnr_s)
    log_r = _check_order(logsnr_t, logsnr_s)
    log_alpha2_t, log_alpha2_s = torch.nn.functional.logsigmoid(logsnr_t), torch.nn.functional.logsigmoid(logsnr_s)
    log_one_minus_r = log1mexp(log_r)
    small = log_one_minus_r + torch.nn.functional.logsigmoid(-logsnr_s)
    large = log_one_minus_r + torch.nn.functional.logsigmoid(-logsnr_t)
    logvar = {"fixed_small": small, "fixed_large": large,
              "fixed_medium": (1 - intp_frac) * small + intp_frac * large}[var_type]
    return {
        "coef_xt": torch.exp(log_r + 0.5 * (log_alpha2_s - log_alpha2_t)),
        "coef_x0": -torch.expm1(log_r) * torch.exp(0.5 * log_alpha2_s),
        "logvar": logvar,
    }


def ddim_from_logsnr(logsnr_t, logsnr_s, eta: float = 0.0) -> Dict[str, torch.Tensor]:
    """The DDIM step x_s = coef_xt x_t + coef_x0 x0 + exp(logvar / 2) z, with x0 the (clipped) prediction.

    Variance eta^2 (1 - r) sigma_s^2 (eta = 1: the posterior, eta = 0: deterministic, logvar = -inf);
    the rest is alpha_s x0 + sqrt(sigma_s^2 - variance) eps_hat with eps_hat = (x_t - alpha_t x0) / sigma_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    logsnr_t, logsnr_s = _float64(logsnr_t), _float64(logsnr_s)
    log_r = _check_order(logsnr_t, logsnr_s)
    log_sigma2_t, log_sigma2_s = (torch.nn.functional.logsigmoid(-logsnr_t),
                                  torch.nn.functional.logsigmoid(-logsnr_s))
    # 1 - eta^2 (1 - r): the share of sigma_s^2 left to the deterministic eps direction.
    log_keep = torch.log1p(-(eta ** 2) * -torch.expm1(log_r))
    logvar = (2 * math.log(eta) if eta > 0 else -math.inf) + log1mexp(log_r) + log_sigma2_s
    return {
        "coef_xt": torch.exp(0.5 * (log_sigma2_s - log_sigma2_t + log_keep)),
        "coef_x0": -torch.expm1(0.5 * (log_r + log_keep)) * torch.sigmoid(logsnr_s).sqrt(),
        "logvar": logvar,
    }


def v_from(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The velocity v = alpha eps - sigma x0 (alpha, sigma per sample, broadcast over the data)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (alpha.to(x0.dtype).reshape(shape) * eps - sigma.to(x0.dtype).reshape(shape) * x0)


def _draw(kind: str, shape, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class ContinuousDiffusion:
    """The VDPM process: a log-SNR schedule, the network's output and variance types, and the loss.

    :param logsnr_schedule, logsnr_min, logsnr_max: see :class:`LogSNRSchedule`.
    :param train_timesteps: T > 0 draws training times t = (k + 1) / T, k uniform in 0..T-1; T = 0 draws
        continuous t ~ U[0, 1).
    :param sample_timesteps: N, the default number of sampling steps (times (i + 1) / N); the KL loss snaps
        its times to this grid.
    :param model_out_type: x0 (alias x_0) | eps | both | v; see :mod:`guided_diffusion.denoisers.continuous`.
    :param model_var_type: fixed_small | fixed_large | fixed_medium (with ``intp_frac``, the weight on large).
    :param reweight_type: constant | snr | truncated_snr | alpha2 (aliases snr_trunc, snr_1plus).
    :param loss_type: mse | kl.
    """

    def __init__(self, *, logsnr_schedule: str = "cosine", logsnr_min: float = -20.0, logsnr_max: float = 20.0,
                 train_timesteps: int = 0, sample_timesteps: int = 256, model_out_type: str = "v",
                 model_var_type: str = "fixed_large", intp_frac: float = 0.0,
                 reweight_type: str = "truncated_snr", loss_type: str = "mse"):
        self.schedule = LogSNRSchedule(logsnr_schedule, logsnr_min, logsnr_max)
        if train_timesteps < 0 or sample_timesteps < 1:
            raise ValueError("train_timesteps must be >= 0 (0 = continuous) and sample_timesteps >= 1")
        if model_var_type not in VAR_TYPES:
            raise ValueError(f"unknown variance type {model_var_type!r}; choose one of {', '.join(VAR_TYPES)}")
        if not 0.0 <= intp_frac <= 1.0:
            raise ValueError(f"intp_frac must lie in [0, 1], got {intp_frac}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
        self.train_timesteps = int(train_timesteps)
        self.sample_timesteps = int(sample_timesteps)
        self.model_out_type = canonical_out_type(model_out_type)
        self.model_var_type = model_var_type
        self.intp_frac = float(intp_frac)
        self.reweight_type = canonical_reweight_type(reweight_type)
        self.loss_type = loss_type

    # ----------------------------------------------------------------------------------------------
    # Time and noise levels.
    def logsnr(self, t) -> torch.Tensor:
        """lambda(t) (float64)."""
        return self.schedule(t)

    def level(self, t) -> NoiseLevel:
        """The noise level at continuous times ``t`` (shape (N,)), in TimeUnit.TIME."""
        t = _float64(t)
        alpha, sigma = alpha_sigma(self.schedule(t))
        return NoiseLevel(alpha=alpha, sigma=sigma, t=t, unit=TimeUnit.TIME,
                          num_train_steps=self.train_timesteps or None)

    def trajectory(self, num_steps: Optional[int] = None) -> Trajectory:
        """The sampling grid t_i = (i + 1) / N, i = 0..N-1 (level 0 least noisy; clean data after it)."""
        n = self.sample_timesteps if num_steps is None else int(num_steps)
        if n < 1:
            raise ValueError(f"need at least one sampling step, got {n}")
        times = np.arange(1, n + 1, dtype=np.float64) / n
        alpha, sigma = alpha_sigma(self.schedule(torch.from_numpy(times)))
        return Trajectory(alpha.numpy(), sigma.numpy(), times, TimeUnit.TIME,
                          num_train_steps=self.train_timesteps or None)

    def sample_train_times(self, n: int, *, device=None, generator: Optional[torch.Generator] = None
                           ) -> torch.Tensor:
        """n float64 training times: (k + 1) / T with k uniform (T > 0) or U[0, 1) (T = 0), from ``generator``."""
        if self.train_timesteps > 0:
            gen_device = generator.device if generator is not None else device
            k = torch.randint(self.train_timesteps, (n,), generator=generator, device=gen_device).to(device)
            return (k.double() + 1) / self.train_timesteps
        return _draw("rand", (n,), generator, device, torch.float64)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t noise."""
        level = self.level(t)
        return level.coefficient(level.alpha, x0) * x0 + level.coefficient(level.sigma, x0) * noise

    def posterior(self, t, s, var_type: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """q(x_s | x_t, x0) between continuous times s < t, with this process's (or the given) variance type."""
        return posterior_from_logsnr(self.schedule(t), self.schedule(s), var_type or self.model_var_type,
                                     self.intp_frac)

    def denoiser(self, model, clip_denoised: bool = True) -> Denoiser:
        """``model(x, t, **kwargs)`` as a denoiser reading this process's output type, accepting any level
        through this process' schedule (denoisers pass through). ``clip_denoised``: pixel data, as VDPM's."""
        if isinstance(model, Denoiser):
            return model
        return ContinuousDenoiser(model, self.model_out_type, self.schedule, clip_denoised=clip_denoised)

    # ----------------------------------------------------------------------------------------------
    # Training.
    def training_losses(self, model, x0: torch.Tensor, t, *, noise: Optional[torch.Tensor] = None,
                        model_kwargs: Optional[dict] = None) -> Dict[str, torch.Tensor]:
        """Per-sample losses at continuous times ``t`` (dict with "loss" and its parts).

        mse: the x0-MSE of the converted prediction times the reweighting (see ``continuous_losses``).
        kl: t is snapped up to the sampling grid, t = ceil(t N) / N with N = sample_timesteps (at least 1 / N),
        s = t - 1 / N; KL(q(x_s | x_t, x0) || p(x_s | x_t)) in bits/dim, the decoder NLL where s = 0.
        Training does not clip x0.
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x0)
        t = torch.as_tensor(t)
        input_eps = torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0
        t = _float64(t).to(x0.device)
        if self.loss_type == "kl":
            n = self.sample_timesteps
            # The guard keeps a grid time k / N, rounded up in its own precision, from moving a whole step up.
            t = (torch.ceil(t * n - 4 * input_eps * n).clamp(min=1) / n).clamp(max=1.0)
        level = self.level(t)
        x_t = level.coefficient(level.alpha, x0) * x0 + level.coefficient(level.sigma, x0) * noise
        pred = self.denoiser(model)(x_t, level, **model_kwargs)
        if self.loss_type == "mse":
            terms = mse_terms(pred, x0, noise, self.reweight_type)
        else:
            s = (t - 1.0 / self.sample_timesteps).clamp(min=0.0)
            logsnr_t, logsnr_s = self.schedule(t), self.schedule(s)
            terms = kl_terms(x0, x_t, pred.x0, posterior_from_logsnr(logsnr_t, logsnr_s, "fixed_small"),
                             posterior_from_logsnr(logsnr_t, logsnr_s, self.model_var_type, self.intp_frac),
                             first_step=s <= 0)
        terms["t"] = t
        terms["pred_x0"] = pred.x0
        return terms

    def training_loss(self, model, x0: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                      p_uncond: float = 0.0, null_label: Union[int, float] = 0, label_key: str = "y",
                      generator: Optional[torch.Generator] = None, t=None, noise: Optional[torch.Tensor] = None,
                      model_kwargs: Optional[dict] = None) -> Dict[str, torch.Tensor]:
        """The batch loss of one training step, with classifier-free label dropout *before* the forward pass.

        ``labels`` (or None for an unconditional model) reach the model as ``model_kwargs[label_key]``; each is
        replaced by ``null_label`` with probability ``p_uncond``. Null-label convention: VDPM reserves index 0
        and stores class k as k + 1 (its one-hot drops index 0); multi-tag labels (N, 40) use the all-zero
        vector. ADM/DiT-style models that reserve ``num_classes`` pass that as ``null_label``.

        ``generator`` (global RNG when None) draws, in this order, the dropout mask (only if p_uncond > 0),
        the times (unless ``t`` is given) and the noise (unless ``noise`` is given); so one seed fixes the step.
        Returns "loss" (the batch mean), "per_sample", "t" and "labels" (what the model actually received).
        """
        model_kwargs = dict(model_kwargs or {})
        if labels is not None:
            labels = drop_labels(labels, p_uncond, null_label, generator)
            model_kwargs[label_key] = labels
        elif p_uncond > 0:
            raise ValueError("p_uncond > 0 needs labels to drop")
        if t is None:
            t = self.sample_train_times(x0.shape[0], device=x0.device, generator=generator)
        if noise is None:
            noise = _draw("randn", x0.shape, generator, x0.device, x0.dtype)
        terms = self.training_losses(model, x0, t, noise=noise, model_kwargs=model_kwargs)
        return {"loss": terms["loss"].mean(), "per_sample": terms["loss"], "t": terms["t"], "labels": labels}

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_1 | x0) || N(0, I)) per sample in bits/dim (the bound's prior term)."""
        level = self.level(torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device))
        return prior_bpd(x0, level.alpha, level.sigma)
