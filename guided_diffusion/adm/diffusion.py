"""The ADM facade: discrete Gaussian diffusion with ADM's interface (``GaussianDiffusion``, ``SpacedDiffusion``).

The methods keep ADM's names and signatures so existing scripts run unchanged, including ADM's defaults
(``clip_denoised=True``: ADM's models are pixel models) and its ``cond_fn(x, t, **model_kwargs)`` contract,
which lives here only: a cond_fn is handed to the generic samplers as a guide that receives the network's
own time at each level. The maths lives in the process-agnostic pieces:
:class:`~guided_diffusion.trajectory.Trajectory` (posterior arrays),
:class:`~guided_diffusion.denoisers.discrete.DiscreteDenoiser` (reading the network's output) and the
samplers in :mod:`guided_diffusion.samplers`. The network and any ``cond_fn`` always receive the original
train index (or its rescaled float when ``rescale_timesteps``), never a respaced index.
"""

from __future__ import annotations

import enum
import math
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from ..denoisers import Denoiser, Prediction, shift_score
from ..denoisers.discrete import LEARNED_VARIANCES, DiscreteDenoiser, ModelMeanType, ModelVarType
from ..denoisers.outputs import ModelOutput
from ..diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from ..nn import mean_flat
from ..samplers import ancestral_distribution, ancestral_step, ddim_step, predict, shift_mean
from ..samplers.common import last, run_chain
from ..timesteps import NoiseLevel, TimeUnit
from ..trajectory import Trajectory

__all__ = ["GaussianDiffusion", "SpacedDiffusion", "ModelMeanType", "ModelVarType", "LossType"]


class LossType(enum.Enum):
    MSE = "mse"  # the simple loss (plus the VB term when the variance is learned)
    RESCALED_MSE = "rescaled_mse"  # the same with the VB term scaled by T / 1000
    KL = "kl"  # the variational bound
    RESCALED_KL = "rescaled_kl"  # the bound times T

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


class GaussianDiffusion:
    """A discrete diffusion process q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) over T steps.

    :param betas: float64 betas, one per step.
    :param model_mean_type, model_var_type: what the network predicts (see ``DiscreteDenoiser``).
    :param loss_type: the training loss.
    :param rescale_timesteps: feed the network t * 1000 / T instead of the integer index.
    :param timestep_map: the original train index of each step (identity unless respaced).
    :param base_alphas_cumprod: abar of the original process when this one is respaced.
    """

    def __init__(self, *, betas: Sequence[float], model_mean_type: ModelMeanType,
                 model_var_type: ModelVarType, loss_type: LossType, rescale_timesteps: bool = False,
                 timestep_map: Optional[Sequence[int]] = None,
                 base_alphas_cumprod: Optional[np.ndarray] = None):
        self.model_mean_type = ModelMeanType(model_mean_type)
        self.model_var_type = ModelVarType(model_var_type)
        self.loss_type = LossType(loss_type)
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError(
                "betas must be a 1-D array with values in (0, 1); the linear schedule reaches beta >= 1 "
                "below 21 diffusion steps: use more steps or the cosine schedule"
            )
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        self.original_num_steps = (self.num_timesteps if base_alphas_cumprod is None
                                   else len(base_alphas_cumprod))

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(self.one_minus_alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(self.one_minus_alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        self.trajectory = Trajectory(self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod,
                                     np.array(self.timestep_map, dtype=np.int64), TimeUnit.TRAIN_INDEX,
                                     num_train_steps=self.original_num_steps)
        if base_alphas_cumprod is None:
            self.train_trajectory = self.trajectory
        else:
            base = np.asarray(base_alphas_cumprod, dtype=np.float64)
            self.train_trajectory = Trajectory(np.sqrt(base), np.sqrt(1.0 - base), np.arange(len(base)),
                                               TimeUnit.TRAIN_INDEX, num_train_steps=len(base))
        # ADM's names for the posterior arrays.
        self.posterior_variance = self.trajectory.posterior_variance
        self.posterior_log_variance_clipped = self.trajectory.posterior_log_variance_clipped
        self.posterior_mean_coef1 = self.trajectory.posterior_mean_coef_x0
        self.posterior_mean_coef2 = self.trajectory.posterior_mean_coef_xt

    # ----------------------------------------------------------------------------------------------
    # The model, wrapped once.
    def denoiser(self, model) -> DiscreteDenoiser:
        """``model`` as a denoiser on this process (what every sampler and guidance method takes).

        A denoiser passes through unchanged, so guided wrappers (CFG, gradient guidance) can be handed to
        the ADM-style loops in place of the network.
        """
        if isinstance(model, Denoiser):
            return model
        return DiscreteDenoiser(model, self.model_mean_type, self.model_var_type,
                                train_trajectory=self.train_trajectory, rescale_timesteps=self.rescale_timesteps,
                                clip_denoised=True)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input for step indices ``t`` of this process (the denoiser's rule)."""
        return self.denoiser(model=None).model_time(self.trajectory.level(t))

    def _guide(self, cond_fn, denoiser: Denoiser):
        """ADM's cond_fn as the samplers' guide: it receives the network's time input at each level."""
        if cond_fn is None:
            return None

        def guide(x: torch.Tensor, level: NoiseLevel, **model_kwargs) -> torch.Tensor:
            return cond_fn(x, denoiser.model_time(level), **model_kwargs)

        return guide

    def _extract(self, array: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.trajectory.extract(array, t, like)

    # ----------------------------------------------------------------------------------------------
    # Forward process and posterior.
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x0)."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = self._extract(self.one_minus_alphas_cumprod, t, x_start)
        log_variance = self._extract(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        """Diffuse the data to step ``t``: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (t = 0 is one step)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from data shape {tuple(x_start.shape)}")
        return (self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x_start
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart)
                / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t))

    # ----------------------------------------------------------------------------------------------
    # One reverse step.
    def p_mean_variance(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                        denoised_fn: Optional[Callable] = None, model_kwargs: Optional[dict] = None
                        ) -> Dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): dict with "mean", "variance", "log_variance", "pred_xstart".

        For previous-x models the mean is recomputed from the (possibly clipped) x0.
        """
        pred = predict(self.denoiser(model), x, self.trajectory.level(t), clip_denoised=clip_denoised,
                       denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        mean, variance, log_variance = ancestral_distribution(
            pred, x, self.trajectory, t, self.model_var_type.value)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred.x0}

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None) -> torch.Tensor:
        """The ancestral mean moved by variance * cond_fn(x, t) (Sohl-Dickstein et al.; ADM eq. in sec. 4)."""
        model_kwargs = model_kwargs or {}
        gradient = cond_fn(x, self._scale_timesteps(t), **model_kwargs)
        return shift_mean(p_mean_var["mean"], p_mean_var["variance"], gradient)

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None) -> Dict[str, torch.Tensor]:
        """p_mean_variance's output with eps shifted by -sqrt(1 - abar_t) * cond_fn(x, t) (ADM's DDIM rule)."""
        model_kwargs = model_kwargs or {}
        level = self.trajectory.level(t)
        current = Prediction.from_x0(x, level, p_mean_var["pred_xstart"])
        shifted = shift_score(current, x, level, cond_fn(x, self._scale_timesteps(t), **model_kwargs))
        out = dict(p_mean_var)
        out["pred_xstart"] = shifted.x0
        out["mean"], _, _ = self.q_posterior_mean_variance(shifted.x0, x, t)
        return out

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 noise_fn=None) -> Dict[str, torch.Tensor]:
        """One ancestral step: dict with "sample" (x_{t-1}) and "pred_xstart"."""
        denoiser = self.denoiser(model)
        return ancestral_step(denoiser, self.trajectory, x, t, variance=self.model_var_type.value,
                              clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                              guide=self._guide(cond_fn, denoiser), model_kwargs=model_kwargs, noise_fn=noise_fn)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, noise_fn=None) -> Dict[str, torch.Tensor]:
        """One DDIM step: dict with "sample" (x_{t-1}) and "pred_xstart"."""
        denoiser = self.denoiser(model)
        return ddim_step(denoiser, self.trajectory, x, t, eta=eta, clip_denoised=clip_denoised,
                         denoised_fn=denoised_fn, guide=self._guide(cond_fn, denoiser), model_kwargs=model_kwargs,
                         noise_fn=noise_fn)

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                            eta=0.0) -> Dict[str, torch.Tensor]:
        """One deterministic DDIM step towards more noise: x_t to x_{t+1}."""
        return ddim_step(self.denoiser(model), self.trajectory, x, t, eta=eta, clip_denoised=clip_denoised,
                         denoised_fn=denoised_fn, model_kwargs=model_kwargs, reverse=True)

    # ----------------------------------------------------------------------------------------------
    # Sampling loops (ADM signatures).
    def _start(self, model, shape, noise, device) -> torch.Tensor:
        if noise is not None:
            return noise
        if device is None:
            if not hasattr(model, "parameters"):
                raise ValueError("pass device= (or noise=) when the model is a plain function or a denoiser")
            device = next(model.parameters()).device
        return torch.randn(*shape, device=device) * self.trajectory.prior_std

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  noise_fn=None) -> Iterator[Dict[str, torch.Tensor]]:
        """Ancestral sampling, yielding {"sample", "pred_xstart", ...} after every step."""
        x = self._start(model, shape, noise, device)
        denoiser = self.denoiser(model)
        return run_chain(
            lambda xt, t: ancestral_step(denoiser, self.trajectory, xt, t, variance=self.model_var_type.value,
                                         clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                         guide=self._guide(cond_fn, denoiser), model_kwargs=model_kwargs,
                                         noise_fn=noise_fn),
            self.trajectory, x, progress=progress)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, noise_fn=None) -> torch.Tensor:
        """Ancestral sampling from ``noise`` (or fresh Gaussian noise of ``shape``); returns the samples."""
        return last(self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                   model_kwargs, device, progress, noise_fn))

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     noise_fn=None) -> Iterator[Dict[str, torch.Tensor]]:
        """DDIM sampling, yielding {"sample", "pred_xstart", "eps"} after every step."""
        x = self._start(model, shape, noise, device)
        denoiser = self.denoiser(model)
        return run_chain(
            lambda xt, t: ddim_step(denoiser, self.trajectory, xt, t, eta=eta, clip_denoised=clip_denoised,
                                    denoised_fn=denoised_fn, guide=self._guide(cond_fn, denoiser),
                                    model_kwargs=model_kwargs, noise_fn=noise_fn),
            self.trajectory, x, progress=progress)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, noise_fn=None) -> torch.Tensor:
        """DDIM sampling from ``noise`` (or fresh Gaussian noise of ``shape``); returns the samples."""
        return last(self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                      model_kwargs, device, progress, eta, noise_fn))

    # ----------------------------------------------------------------------------------------------
    # Training losses and likelihood.
    def _vb_from_distribution(self, x_start, x_t, t, mean, log_variance) -> torch.Tensor:
        """KL(q(x_{t-1} | x_t, x0) || N(mean, exp(log_variance))) in bits per dim, the decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_variance)
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """The VB term of step t in bits per dim: KL to the true posterior, or the decoder NLL at t = 0."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        return {"output": self._vb_from_distribution(x_start, x_t, t, out["mean"], out["log_variance"]),
                "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> Dict[str, torch.Tensor]:
        """Per-sample losses at steps ``t``: dict with "loss" and, for MSE losses, "mse" (and "vb" when the
        variance is learned: the VB term with the mean detached, so it only trains the variance).

        The network is read through this process' denoiser (its output type and learned-variance channels).
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: Dict[str, torch.Tensor] = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        level = self.trajectory.level(t)
        pred = self.denoiser(model)(x_t, level, **model_kwargs)
        if self.model_var_type in LEARNED_VARIANCES:
            frozen = Prediction(x0=pred.x0.detach(), eps=pred.eps.detach(), var_values=pred.var_values,
                                var_kind=pred.var_kind)
            mean, _, log_variance = ancestral_distribution(frozen, x_t, self.trajectory, t)
            terms["vb"] = self._vb_from_distribution(x_start, x_t, t, mean, log_variance)
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target, output = self._regression_pair(pred, x_start, x_t, t, noise, level)
        terms["mse"] = mean_flat((target - output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _regression_pair(self, pred: Prediction, x_start, x_t, t, noise, level: NoiseLevel):
        """(target, prediction) of the simple loss in the space the network outputs."""
        kind = self.model_mean_type
        if kind is ModelOutput.EPS:
            return noise, pred.eps
        if kind is ModelOutput.X0:
            return x_start, pred.x0
        if kind is ModelOutput.PREV_X:
            mean = self.q_posterior_mean_variance(pred.x0, x_t, t)[0]
            return self.q_posterior_mean_variance(x_start, x_t, t)[0], mean
        a, s = level.coefficient(level.alpha, x_start), level.coefficient(level.sigma, x_start)
        return a * noise - s * x_start, a * pred.eps - s * pred.x0  # v

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x0) || N(0, I)) in bits per dim; not trainable, shows how well the prior matches."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None) -> Dict[str, torch.Tensor]:
        """The full variational bound in bits per dim, with per-step terms ("vb", "xstart_mse", "mse")."""
        vb, xstart_mse, mse = [], [], []
        for step in range(self.num_timesteps - 1, -1, -1):
            t = torch.full((x_start.shape[0],), step, device=x_start.device, dtype=torch.long)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised,
                                         model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            mse.append(mean_flat((self._predict_eps_from_xstart(x_t, t, out["pred_xstart"]) - noise) ** 2))
        vb_t, xstart_mse_t, mse_t = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
        prior_bpd = self._prior_bpd(x_start)
        return {"total_bpd": vb_t.sum(dim=1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb_t,
                "xstart_mse": xstart_mse_t, "mse": mse_t}


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only ``use_timesteps`` of a base process.

    The kept steps' betas are 1 - abar_k / abar_{previous kept}; the network still receives original
    indices through ``timestep_map``.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        if not self.use_timesteps or min(self.use_timesteps) < 0 or max(self.use_timesteps) >= len(base_betas):
            raise ValueError(f"kept timesteps must lie in [0, {len(base_betas)})")
        last_alpha_cumprod = 1.0
        new_betas, timestep_map = [], []
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(timestep_map=timestep_map, base_alphas_cumprod=base_alphas_cumprod, **kwargs)
