"""Closed-form checks of the discrete process, the trajectory posterior and the denoiser read-outs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.denoisers import Prediction
from guided_diffusion.denoisers.discrete import DiscreteDenoiser, ModelMeanType, ModelVarType
from guided_diffusion.denoisers.outputs import ModelOutput
from guided_diffusion.diffusion.losses import discretized_gaussian_log_likelihood
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.toy import GaussianMixture
from guided_diffusion.trajectory import Trajectory


def test_posterior_arrays_are_ddpm_closed_forms():
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing="ddim50")
    betas, abar = diffusion.betas, diffusion.alphas_cumprod
    abar_prev = np.append(1.0, abar[:-1])
    assert np.allclose(diffusion.posterior_variance, betas * (1 - abar_prev) / (1 - abar), rtol=1e-10, atol=0)
    assert np.allclose(diffusion.posterior_mean_coef1, betas * np.sqrt(abar_prev) / (1 - abar), rtol=1e-10)
    assert np.allclose(diffusion.posterior_mean_coef2, (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
                       rtol=1e-10)
    assert np.allclose(diffusion.trajectory.betas, betas, rtol=1e-9)
    # The last step's "large" variance and clipped log-variance borrow the next step's posterior variance.
    traj = diffusion.trajectory
    assert traj.large_variance[0] == traj.posterior_variance[1] and traj.posterior_variance[0] == 0
    assert np.allclose(traj.large_variance[1:], betas[1:], rtol=1e-9)
    assert np.exp(traj.posterior_log_variance_clipped[0]) == pytest.approx(traj.posterior_variance[1])


def test_variance_exploding_trajectory_posterior():
    sigmas = np.array([0.5, 1.0, 4.0])
    traj = Trajectory(np.ones(3), sigmas, sigmas, "edm_sigma")
    ratio = np.array([0.0, 0.25, 1 / 16])  # sigma_s^2 / sigma_t^2 with sigma_s the previous level
    assert np.allclose(traj.posterior_mean_coef_xt, ratio)
    assert np.allclose(traj.posterior_mean_coef_x0, 1 - ratio)
    assert np.allclose(traj.posterior_variance, np.append(0, sigmas[:-1] ** 2) * (1 - ratio))
    with pytest.raises(ValueError, match="increase"):
        Trajectory(np.ones(3), sigmas[::-1], sigmas, "edm_sigma")


@pytest.mark.parametrize("mean_type", [ModelMeanType.EPSILON, ModelMeanType.START_X, ModelMeanType.PREVIOUS_X,
                                       ModelOutput.V])
def test_every_mean_type_reads_back_x0(mean_type):
    diffusion = create_gaussian_diffusion(steps=100)
    x0 = torch.rand(4, 3, 2, 2) * 1.6 - 0.8
    t = torch.tensor([0, 5, 50, 99])
    noise = torch.randn_like(x0)
    xt = diffusion.q_sample(x0, t, noise)

    def model(x, ts):  # the ideal network of each parameterisation for this one x0
        if mean_type == ModelMeanType.EPSILON:
            return noise
        if mean_type == ModelMeanType.START_X:
            return x0
        if mean_type == ModelOutput.V:
            a = torch.from_numpy(diffusion.sqrt_alphas_cumprod)[ts].float().view(-1, 1, 1, 1)
            s = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod)[ts].float().view(-1, 1, 1, 1)
            return a * noise - s * x0
        return diffusion.q_posterior_mean_variance(x0, x, ts)[0]

    denoiser = DiscreteDenoiser(model, mean_type, train_trajectory=diffusion.trajectory)
    pred = denoiser(xt, diffusion.trajectory.level(t))
    assert (pred.x0 - x0).abs().max() < 1e-3
    assert (pred.eps - noise)[1:].abs().max() < 1e-3  # at t = 0, eps is ill-conditioned in float32


@pytest.mark.parametrize("kind", ["both", "edm"])
def test_discrete_models_refuse_continuous_only_outputs(kind):
    diffusion = create_gaussian_diffusion(steps=100)
    with pytest.raises(ValueError, match="does not output"):
        DiscreteDenoiser(lambda x, t: x, kind, train_trajectory=diffusion.trajectory)


def test_one_enum_names_every_output_and_keeps_adm_spellings():
    assert ModelMeanType.EPSILON is ModelOutput.EPS and ModelMeanType.START_X is ModelOutput.X0
    assert ModelOutput("epsilon") is ModelOutput.EPS and ModelOutput("x_0") is ModelOutput.X0
    assert ModelOutput("previous_x") is ModelOutput.PREV_X
    assert [m.value for m in ModelOutput] == ["eps", "x0", "v", "both", "prev_x", "edm"]
    assert ModelOutput.BOTH.channels(3) == 6 and ModelOutput.V.channels(3) == 3


def test_edm_output_is_the_preconditioned_denoiser():
    """D = c_skip u + c_out F with u = x / alpha, s = sigma / alpha (EDM eq. 7), whatever (alpha, sigma)."""
    from guided_diffusion.denoisers.outputs import prediction_from_output
    from guided_diffusion.timesteps import NoiseLevel

    sigma_data, s = 0.5, torch.tensor([0.1, 2.0, 40.0], dtype=torch.float64)
    x0, eps, f = (torch.randn(3, 2, 2, 2, dtype=torch.float64) for _ in range(3))
    for alpha in (torch.ones(3, dtype=torch.float64), torch.rsqrt(1 + s ** 2)):
        level = NoiseLevel.at(alpha, s * alpha)
        x = alpha.view(-1, 1, 1, 1) * (x0 + s.view(-1, 1, 1, 1) * eps)
        pred = prediction_from_output(f, x, level, "edm", sigma_data=sigma_data)
        c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
        c_out = s * sigma_data / (s ** 2 + sigma_data ** 2).sqrt()
        expected = c_skip.view(-1, 1, 1, 1) * (x0 + s.view(-1, 1, 1, 1) * eps) + c_out.view(-1, 1, 1, 1) * f
        torch.testing.assert_close(pred.x0, expected, rtol=1e-12, atol=1e-12)


def test_v_prediction_round_trip():
    diffusion = create_gaussian_diffusion(steps=1000)
    level = diffusion.trajectory.level(torch.full((2,), 300))
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a, s = level.coefficient(level.alpha, x0), level.coefficient(level.sigma, x0)
    pred = Prediction.from_v(a * x0 + s * eps, level, a * eps - s * x0)
    assert torch.allclose(pred.x0, x0, atol=1e-5) and torch.allclose(pred.eps, eps, atol=1e-5)


def test_learned_variance_channel_errors():
    diffusion = create_gaussian_diffusion(steps=100, learn_sigma=True)
    level = diffusion.trajectory.level(torch.tensor([3]))
    three = DiscreteDenoiser(lambda x, t: x, ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE,
                             train_trajectory=diffusion.trajectory)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        three(torch.zeros(1, 3, 2, 2), level)
    six = DiscreteDenoiser(lambda x, t: torch.cat([x, x], 1), train_trajectory=diffusion.trajectory)
    with pytest.raises(ValueError, match="learn_sigma=True"):
        six(torch.zeros(1, 3, 2, 2), level)


def test_rescaled_timesteps_reach_the_model_as_floats():
    seen = []
    diffusion = create_gaussian_diffusion(steps=500, timestep_respacing="ddim5", rescale_timesteps=True)
    diffusion.ddim_sample_loop(lambda x, t: seen.append(t) or torch.zeros_like(x), (1, 1, 1, 1),
                               device="cpu")
    assert [float(t[0]) for t in seen] == [800.0, 600.0, 400.0, 200.0, 0.0]


def test_point_mass_data_has_zero_kl_with_the_ideal_model():
    # Data x0 = 0: the ideal eps is x_t / sigma_t, so pred_x0 = 0 and, with the true posterior variance
    # (fixed_small), every KL term is 0; the t = 0 term is the decoder NLL of a centred Gaussian.
    diffusion = create_gaussian_diffusion(steps=100, sigma_small=True)
    point_mass = GaussianMixture([1.0], [[0.0] * 4], [0.0])  # the oracle with C = 0
    ideal = point_mass.ideal_model(diffusion.train_trajectory.alphas, diffusion.train_trajectory.sigmas)
    x0 = torch.zeros(3, 1, 2, 2)
    out = diffusion.calc_bpd_loop(ideal, x0, clip_denoised=False)  # columns run t = T-1, ..., 0
    assert out["vb"][:, :-1].abs().max() < 1e-4
    log_scale = 0.5 * torch.full_like(x0, float(diffusion.posterior_log_variance_clipped[0]))
    decoder = -discretized_gaussian_log_likelihood(x0, means=torch.zeros_like(x0), log_scales=log_scale)
    assert torch.allclose(out["vb"][:, -1], decoder.mean(dim=(1, 2, 3)) / math.log(2), atol=1e-5)
    assert torch.allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert out["xstart_mse"].abs().max() < 1e-8


def test_device_tables_are_cached_without_keeping_arrays_alive():
    import gc

    traj = create_gaussian_diffusion(steps=100).trajectory
    index = torch.tensor([5, 7])
    first = traj.take(traj.alphas, index)
    assert torch.equal(first, torch.from_numpy(traj.alphas[[5, 7]]))
    cached = len(traj._device_arrays)
    for _ in range(20):  # temporary arrays must not pile up in the cache
        traj.take(np.linspace(0, 1, 100), index)
    gc.collect()
    assert len(traj._device_arrays) == cached
