"""Closed-form checks of the continuous log-SNR process: schedules, parameterisations, reweighting, posterior,
DDIM on Gaussian data, the KL bound and the training-time draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guided_diffusion.denoisers import Prediction
from guided_diffusion.denoisers.continuous import ContinuousDenoiser, canonical_out_type, prediction_from_output
from guided_diffusion.diffusion import (
    ContinuousDiffusion,
    LogSNRSchedule,
    alpha_sigma,
    ddim_from_logsnr,
    log1mexp,
    loss_weight,
    posterior_from_logsnr,
    v_from,
)
from guided_diffusion.toy import GaussianMixture
from guided_diffusion.samplers import ancestral_step, sample_ddim

T5 = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
ALL_OUT_TYPES = ("x0", "eps", "both", "v")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------------------
# Schedules
def test_cosine_schedule_closed_form():
    logsnr = LogSNRSchedule("cosine")(T5)
    # alpha^2 = cos^2(pi t'/2): lambda = -2 log tan(pi t'/2), so t' = 1/4 gives 2 log(1 + sqrt 2) = 1.7627 (the
    # truncation to [-20, 20] moves t' by ~3e-5: 1.7626).
    assert logsnr.tolist() == pytest.approx([20.0, 1.763, 0.0, -1.763, -20.0], abs=1e-3)
    assert logsnr[1].item() == pytest.approx(2 * math.log(1 + math.sqrt(2)), abs=2e-4)


def test_linear_schedule_closed_form():
    # alpha^2 = lerp(sigmoid(20), sigmoid(-20), t) ~ 1 - t, so lambda = logit(1 - t) = log((1 - t) / t).
    logsnr = LogSNRSchedule("linear")(T5)
    assert logsnr.tolist() == pytest.approx([20.0, math.log(3), 0.0, -math.log(3), -20.0], abs=1e-7)


def test_sigmoid_schedule_is_linear_in_logsnr():
    logsnr = LogSNRSchedule("sigmoid")(T5)
    assert logsnr.tolist() == pytest.approx([20.0, 10.0, 0.0, -10.0, -20.0], abs=1e-12)
    custom = LogSNRSchedule("sigmoid", logsnr_min=-6.0, logsnr_max=8.0)(T5)
    assert custom.tolist() == pytest.approx([8.0, 4.5, 1.0, -2.5, -6.0], abs=1e-12)


def test_legacy_schedule_is_ddpm_linear_betas_in_continuous_time():
    logsnr = LogSNRSchedule("legacy", logsnr_min=-5.0, logsnr_max=5.0)(T5)  # legacy ignores min / max
    # log alpha_bar(t) = 1000 * int_0^t log(1 - beta(u)) du with beta(u) = 1e-4 + (0.02 - 1e-4) u, by quadrature.
    u = np.linspace(0.0, 1.0, 400_001)
    integrand = np.log(1.0 - (1e-4 + (0.02 - 1e-4) * u))
    cumulative = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u))])
    log_abar = 1000.0 * np.interp(T5.numpy(), u, cumulative)
    expected = log_abar - np.log1p(-np.exp(log_abar - 1e-9))
    assert logsnr.numpy() == pytest.approx(expected, abs=1e-6)
    assert logsnr[0].item() == pytest.approx(20.72, abs=5e-3) and logsnr[-1].item() == pytest.approx(-10.12, abs=5e-3)
    # ... and it ends where the 1000-step discrete DDPM chain ends: logit(alpha_bar_1000).
    betas = np.linspace(1e-4, 0.02, 1000)
    log_abar_1000 = np.sum(np.log1p(-betas))
    assert logsnr[-1].item() == pytest.approx(log_abar_1000 - np.log1p(-np.exp(log_abar_1000)), abs=0.01)


@pytest.mark.parametrize("name", ["linear", "sigmoid", "cosine", "legacy"])
def test_schedules_decrease_and_symmetric_ones_are_odd(name):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    logsnr = LogSNRSchedule(name)(t)
    assert bool((logsnr[1:] < logsnr[:-1]).all())
    if name != "legacy":  # with logsnr_min = -logsnr_max these three are odd about t = 1/2
        assert (logsnr + logsnr.flip(0)).abs().max().item() < 1e-6


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-12, -1e-3, -0.5, -5.0, -40.0], dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(expected, rel=1e-12)
    assert torch.isneginf(log1mexp(torch.tensor(0.0, dtype=torch.float64)))
    with pytest.raises(ValueError):
        log1mexp(torch.tensor([0.1]))


# ------------------------------------------------------------------------------------------------------------
# Parameterisations
def _level(t):
    return ContinuousDiffusion(logsnr_schedule="cosine").level(torch.as_tensor(t, dtype=torch.float64))


def test_x0_eps_v_round_trips():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    level = _level([0.02, 0.3, 0.5, 0.8, 0.97])
    a, s = level.coefficient(level.alpha, x0), level.coefficient(level.sigma, x0)
    x_t = a * x0 + s * eps
    v = v_from(x0, eps, level.alpha, level.sigma)
    assert torch.allclose(v, a * eps - s * x0, atol=1e-12)
    for pred in (Prediction.from_x0(x_t, level, x0), Prediction.from_eps(x_t, level, eps),
                 Prediction.from_v(x_t, level, v)):
        assert (pred.x0 - x0).abs().max().item() < 1e-6
        assert (pred.eps - eps).abs().max().item() < 1e-6
        assert (v_from(pred.x0, pred.eps, level.alpha, level.sigma) - v).abs().max().item() < 1e-6


@pytest.mark.parametrize("out_type", ALL_OUT_TYPES + ("x_0",))
def test_denoiser_reads_each_output_type(out_type):
    """A network that outputs the true target of its type gives back the true x0 and eps."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    level = _level([0.1, 0.4, 0.6, 0.9])
    a, s = level.coefficient(level.alpha, x0), level.coefficient(level.sigma, x0)
    target = {"x0": x0, "x_0": x0, "eps": eps, "v": a * eps - s * x0, "both": torch.cat([x0, eps], 1)}[out_type]
    seen_t = []

    def model(x, t, **_):
        seen_t.append(t)
        return target

    pred = ContinuousDenoiser(model, out_type)(a * x0 + s * eps, level)
    assert (pred.x0 - x0).abs().max().item() < 1e-6 and (pred.eps - eps).abs().max().item() < 1e-6
    assert torch.allclose(seen_t[0].double(), level.t, atol=1e-7)  # the network sees t, not lambda


def test_both_mixes_the_heads_by_sigma2_and_alpha2():
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    level = _level([0.2, 0.7])
    x0_raw, eps_raw = torch.randn_like(x), torch.randn_like(x)
    pred = prediction_from_output(torch.cat([x0_raw, eps_raw], 1), x, level, "both")
    a2, s2 = level.coefficient(level.alpha ** 2, x), level.coefficient(level.sigma ** 2, x)
    x0_eps = (x - s2.sqrt() * eps_raw) / a2.sqrt()
    assert torch.allclose(pred.x0, s2 * x0_raw + a2 * x0_eps, atol=1e-10)
    assert torch.allclose(a2.sqrt() * pred.x0 + s2.sqrt() * pred.eps, x, atol=1e-10)  # eps re-derived
    with pytest.raises(ValueError, match="needs 1 channels"):
        prediction_from_output(torch.cat([x0_raw, eps_raw], 1), x, level, "v")
    assert canonical_out_type("x_0") == "x0"
    with pytest.raises(ValueError):
        canonical_out_type("score")


# ------------------------------------------------------------------------------------------------------------
# Losses
@pytest.mark.parametrize("out_type", ALL_OUT_TYPES)
@pytest.mark.parametrize("reweight", ["constant", "snr", "truncated_snr", "alpha2", "snr_trunc", "snr_1plus"])
def test_reweighting_is_its_multiple_of_the_x0_mse(out_type, reweight):
    process = ContinuousDiffusion(logsnr_schedule="cosine", model_out_type=out_type, reweight_type=reweight)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(6, 2, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    # Times on both sides of SNR = 1 (t = 1/2), so truncation is exercised.
    t = torch.tensor([0.05, 0.2, 0.45, 0.55, 0.8, 0.95], dtype=torch.float64)
    channels = 4 if out_type == "both" else 2

    def model(x, t, **_):  # an arbitrary (wrong) network, so every MSE is far from zero
        return torch.sin(3 * x.repeat(1, channels // 2, 1, 1)) + 0.3

    terms = process.training_losses(model, x0, t, noise=noise)
    x0_mse = ((terms["pred_x0"] - x0) ** 2).mean(dim=(1, 2, 3))
    snr = torch.exp(process.logsnr(t))
    expected = {"constant": torch.ones_like(snr), "snr": snr, "truncated_snr": snr.clamp(min=1),
                "snr_trunc": snr.clamp(min=1), "alpha2": 1 + snr, "snr_1plus": 1 + snr}[reweight] * x0_mse
    assert torch.allclose(terms["loss"], expected, rtol=1e-6, atol=0)
    assert torch.allclose(loss_weight(process.logsnr(t), reweight) * x0_mse, expected, rtol=1e-12)
    if out_type != "x0":  # the x0 behind the loss is the converted prediction, not the raw output
        assert not torch.allclose(terms["pred_x0"], model(x0, t)[:, :2])


def _hand_posterior(logsnr_t, logsnr_s):
    """q(x_s | x_t, x0) from alpha and sigma directly (VDM's alpha_{t|s}, sigma_{t|s}), float64."""
    a_t, s_t = math.sqrt(1 / (1 + math.exp(-logsnr_t))), math.sqrt(1 / (1 + math.exp(logsnr_t)))
    a_s, s_s = math.sqrt(1 / (1 + math.exp(-logsnr_s))), math.sqrt(1 / (1 + math.exp(logsnr_s)))
    a_ts = a_t / a_s
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    return {"coef_xt": a_ts * s_s ** 2 / s_t ** 2, "coef_x0": a_s * var_ts / s_t ** 2,
            "small": var_ts * s_s ** 2 / s_t ** 2, "large": var_ts, "a_s": a_s, "s_s": s_s, "a_t": a_t, "s_t": s_t}


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "fixed_medium"])
def test_posterior_against_a_direct_float64_computation(var_type):
    pairs = [(3.0, 5.0), (-1.0, 2.5), (-8.0, -6.0), (0.5, 0.7)]  # (lambda_t, lambda_s), s less noisy
    logsnr_t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    logsnr_s = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    ours = posterior_from_logsnr(logsnr_t, logsnr_s, var_type, intp_frac=0.3)
    for i, (lt, ls) in enumerate(pairs):
        hand = _hand_posterior(lt, ls)
        variance = {"fixed_small": hand["small"], "fixed_large": hand["large"],
                    "fixed_medium": hand["small"] ** 0.7 * hand["large"] ** 0.3}[var_type]
        assert ours["coef_xt"][i].item() == pytest.approx(hand["coef_xt"], rel=1e-10)
        assert ours["coef_x0"][i].item() == pytest.approx(hand["coef_x0"], rel=1e-10)
        assert math.exp(ours["logvar"][i].item()) == pytest.approx(variance, rel=1e-9)
    with pytest.raises(ValueError, match="less noisy"):
        posterior_from_logsnr(logsnr_s, logsnr_t)


def test_ddim_coefficients_closed_forms():
    logsnr_t = torch.tensor([-2.0, 1.0, 6.0], dtype=torch.float64)
    logsnr_s = torch.tensor([-1.0, 4.0, 6.5], dtype=torch.float64)
    deterministic = ddim_from_logsnr(logsnr_t, logsnr_s, eta=0.0)
    a_t, s_t = alpha_sigma(logsnr_t)
    a_s, s_s = alpha_sigma(logsnr_s)
    # x_s = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t.
    assert torch.allclose(deterministic["coef_xt"], s_s / s_t, rtol=1e-12)
    assert torch.allclose(deterministic["coef_x0"], a_s - s_s * a_t / s_t, rtol=1e-10)
    # eta = 1 is the ancestral step with the true posterior variance.
    ancestral = ddim_from_logsnr(logsnr_t, logsnr_s, eta=1.0)
    posterior = posterior_from_logsnr(logsnr_t, logsnr_s, "fixed_small")
    for key in ("coef_xt", "coef_x0", "logvar"):
        assert torch.allclose(ancestral[key], posterior[key], rtol=1e-10)


@pytest.mark.parametrize("name", ["cosine", "legacy"])
def test_sampling_trajectory_agrees_with_the_log_snr_posterior(name):
    """The generic Trajectory (built from alpha, sigma) and the log-SNR formulas describe the same steps."""
    process = ContinuousDiffusion(logsnr_schedule=name)
    traj = process.trajectory(50)
    assert traj.times.tolist() == pytest.approx([(i + 1) / 50 for i in range(50)])
    t = torch.from_numpy(traj.times[1:])
    post = process.posterior(t, t - 1 / 50, "fixed_small")
    large = process.posterior(t, t - 1 / 50, "fixed_large")
    assert np.allclose(traj.posterior_mean_coef_xt[1:], post["coef_xt"].numpy(), rtol=1e-8)
    assert np.allclose(traj.posterior_mean_coef_x0[1:], post["coef_x0"].numpy(), rtol=1e-8)
    assert np.allclose(traj.posterior_log_variance_clipped[1:], post["logvar"].numpy(), rtol=1e-8, atol=1e-8)
    assert np.allclose(traj.log_large_variance[1:], large["logvar"].numpy(), rtol=1e-8, atol=1e-8)


def test_ancestral_fixed_medium_is_the_geometric_interpolation():
    """The shared ancestral sampler's fixed_medium step equals small^(1-f) * large^f of the log-SNR posterior."""
    process = ContinuousDiffusion(logsnr_schedule="cosine", model_var_type="fixed_medium", intp_frac=0.3)
    traj = process.trajectory(10)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    out = ancestral_step(gaussian_x0(0.0, 0.5, 4), traj, x, torch.tensor([3, 8]), variance="fixed_medium",
                         intp_frac=0.3, noise_fn=torch.zeros_like)
    t = torch.tensor([0.4, 0.9], dtype=torch.float64)
    expected = process.posterior(t, t - 0.1)["logvar"]
    assert torch.allclose(out["log_variance"][:, 0, 0, 0], expected, rtol=1e-8)
    small = process.posterior(t, t - 0.1, "fixed_small")["logvar"]
    large = process.posterior(t, t - 0.1, "fixed_large")["logvar"]
    assert torch.allclose(expected, 0.7 * small + 0.3 * large, rtol=1e-12)


def gaussian_x0(mean: float, var: float, dim: int):
    """The oracle's ideal denoiser of x0 ~ N(mean, var I) in ``dim`` values per sample:
    E[x0 | x_t] = mean + alpha var / (alpha^2 var + sigma^2) (x - alpha mean)."""
    return GaussianMixture([1.0], [[mean] * dim], [var]).denoiser()


def test_ddim_with_the_ideal_gaussian_denoiser_recovers_the_moments():
    """DDIM is affine for Gaussian data. In u = x / alpha, rho = sigma / alpha a step maps
    u_s - mean = (u_t - mean) (var + rho_s rho_t) / (var + rho_t^2); so x_final = mean + (z / alpha_1 - mean) * P with
    P the product over steps, and as the steps shrink P / alpha_1 -> sqrt(var) (the probability-flow ODE)."""
    mean, var, steps = 0.3, 0.09, 200
    process = ContinuousDiffusion(logsnr_schedule="cosine")
    traj = process.trajectory(steps)
    z = torch.randn(4000, 2, 1, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = sample_ddim(gaussian_x0(mean, var, 2), traj, z, clip_denoised=False)
    rho = traj.sigmas / traj.alphas
    product = 1.0
    for i in range(steps - 1, -1, -1):
        rho_s = rho[i - 1] if i > 0 else 0.0
        product *= (var + rho_s * rho[i]) / (var + rho[i] ** 2)
    expected = mean + (z / traj.alphas[-1] - mean) * product
    assert (out - expected).abs().max().item() < 1e-9
    std = product / traj.alphas[-1]
    assert abs(std / math.sqrt(var) - 1) < 0.015  # 200 cosine steps: 1.1% short of the ODE's exact spread
    assert abs(mean * (1 - product) - mean) < 1e-5  # alpha_1 = 4.5e-5 at lambda = -20: P ~ 1.3e-5
    se = math.sqrt(var / out.numel())
    assert abs(out.mean().item() - mean) < 4 * se
    assert abs(out.std().item() / math.sqrt(var) - 1) < 0.015 + 4 / math.sqrt(2 * out.numel())


# ------------------------------------------------------------------------------------------------------------
# KL bound
def _x0_model(value):
    """A network of output type x0 that always answers ``value`` (a tensor like the data, or a callable)."""
    def model(x, t, **_):
        return value() if callable(value) else value
    return model


def test_kl_loss_matches_a_hand_computation():
    n_steps, t = 10, 0.25  # snapped up to 0.3, s = 0.2
    x0 = torch.full((1, 1, 2, 2), 0.4, dtype=torch.float64)
    noise = torch.tensor([[[[0.3, -1.0], [0.5, 2.0]]]], dtype=torch.float64)
    schedule = LogSNRSchedule("cosine")
    hand = _hand_posterior(schedule(torch.tensor(0.3, dtype=torch.float64)).item(),
                           schedule(torch.tensor(0.2, dtype=torch.float64)).item())
    small, large = math.log(hand["small"]), math.log(hand["large"])
    for var_type, model_logvar in (("fixed_small", small), ("fixed_large", large)):
        process = ContinuousDiffusion(logsnr_schedule="cosine", model_out_type="x0", model_var_type=var_type,
                                      loss_type="kl", sample_timesteps=n_steps)
        # KL(N(m1, e^S) || N(m2, e^L)) = (-1 + L - S + e^(S - L) + (m1 - m2)^2 e^-L) / 2; the means differ by
        # coef_x0 * (x0 - x0_hat).
        oracle = process.training_losses(_x0_model(x0), x0, torch.tensor([t]), noise=noise)["loss"].item()
        variance_part = 0.5 * (-1 + model_logvar - small + math.exp(small - model_logvar))
        assert oracle == pytest.approx(variance_part / math.log(2), abs=1e-10)
        zero = process.training_losses(_x0_model(torch.zeros_like(x0)), x0, torch.tensor([t]), noise=noise)
        mean_part = 0.5 * (hand["coef_x0"] * 0.4) ** 2 * math.exp(-model_logvar)
        assert zero["loss"].item() == pytest.approx((variance_part + mean_part) / math.log(2), rel=1e-8)
        # Times snap up to the sampling grid: t = 0.25 and t = 0.3 are the same term.
        at_grid = process.training_losses(_x0_model(torch.zeros_like(x0)), x0, torch.tensor([0.3]), noise=noise)
        assert at_grid["loss"].item() == pytest.approx(zero["loss"].item(), rel=1e-12)


def _decoder_bits(x0, centre, scale):
    """-log2 of the discretised Gaussian (bins 2/255 wide, edge bins open) of x0 around ``centre``, per pixel mean,
    with the decoder's tanh approximation of the normal CDF, written out from the original's formula."""
    def cdf(v):
        return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    bits = 0.0
    for x, mean in zip(x0, centre):
        upper, lower = (x - mean + 1 / 255) / scale, (x - mean - 1 / 255) / scale
        p = cdf(upper) if x < -0.999 else (1 - cdf(lower) if x > 0.999 else cdf(upper) - cdf(lower))
        bits -= math.log(max(p, 1e-12)) / math.log(2)
    return bits / len(x0)


@pytest.mark.parametrize("schedule_kw,var_type", [
    (dict(logsnr_schedule="cosine"), "fixed_large"),
    # lambda(0) = 2: alpha_0^2 = 0.88, so the posterior mean of the step to s = 0 is far from the predicted x0.
    (dict(logsnr_schedule="sigmoid", logsnr_min=-4.0, logsnr_max=2.0), "fixed_small"),
])
def test_kl_first_step_is_the_original_decoder_centred_on_predicted_x0(schedule_kw, var_type):
    """At s = 0 the term is the original's decoder NLL: centred on the (unclipped) predicted x0, log-scale half the
    model's log-variance of the step, in bits; not centred on the posterior mean."""
    process = ContinuousDiffusion(model_out_type="x0", model_var_type=var_type, loss_type="kl",
                                  sample_timesteps=10, **schedule_kw)
    levels = torch.tensor([-1.0, 10 / 127.5 - 1, 200 / 127.5 - 1, 1.0], dtype=torch.float64)  # on the 8-bit grid
    x0 = levels.reshape(1, 1, 2, 2)
    noise = torch.tensor([[[[0.3, -1.0], [0.5, 2.0]]]], dtype=torch.float64)
    offset = 0.01
    out = process.training_losses(_x0_model(x0 + offset), x0, torch.tensor([0.04]), noise=noise)  # t -> 0.1, s = 0
    schedule = process.schedule
    hand = _hand_posterior(schedule(torch.tensor(0.1, dtype=torch.float64)).item(),
                           schedule(torch.tensor(0.0, dtype=torch.float64)).item())
    scale = math.sqrt(hand["large" if var_type == "fixed_large" else "small"])
    pixels = x0.flatten().tolist()
    expected = _decoder_bits(pixels, [x + offset for x in pixels], scale)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)
    x_t = (hand["a_t"] * x0 + math.sqrt(1 - hand["a_t"] ** 2) * noise).flatten().tolist()
    posterior_mean = [hand["coef_xt"] * xt + hand["coef_x0"] * (x + offset) for xt, x in zip(x_t, pixels)]
    other = _decoder_bits(pixels, posterior_mean, scale)
    if schedule_kw["logsnr_schedule"] == "sigmoid":  # there the two centrings are far apart: the test can tell
        assert abs(other - expected) > 1e-2  # bits; the tolerance above is 1e-9 relative


def test_prior_bpd_closed_form():
    process = ContinuousDiffusion(logsnr_schedule="legacy")  # ends at lambda = -10.12, not quite noise
    x0 = torch.full((1, 3, 2, 2), 0.8, dtype=torch.float64)
    a, s = alpha_sigma(process.logsnr(torch.tensor(1.0)))
    expected = 0.5 * (-1 - math.log(s.item() ** 2) + s.item() ** 2 + a.item() ** 2 * 0.64) / math.log(2)
    assert process.prior_bpd(x0).item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------------------------------
# Training draws
def test_training_times_discrete_and_continuous():
    gen = torch.Generator().manual_seed(5)
    discrete = ContinuousDiffusion(train_timesteps=4).sample_train_times(4000, generator=gen)
    assert sorted(set(discrete.tolist())) == [0.25, 0.5, 0.75, 1.0]
    continuous = ContinuousDiffusion(train_timesteps=0).sample_train_times(4000, generator=gen)
    assert continuous.dtype == torch.float64 and 0 <= continuous.min() and continuous.max() < 1
    assert abs(continuous.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / 4000)
    assert len(set(continuous.tolist())) == 4000


def test_training_loss_is_determined_by_its_generator():
    process = ContinuousDiffusion(model_out_type="eps", reweight_type="snr")
    x0 = torch.rand(8, 1, 2, 2) * 2 - 1
    labels = torch.arange(1, 9)

    def model(x, t, y=None):
        return torch.tanh(x) * t.reshape(-1, 1, 1, 1) + 0.01 * y.reshape(-1, 1, 1, 1)

    runs = [process.training_loss(model, x0, labels, p_uncond=0.5, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0]["loss"], runs[1]["loss"]) and torch.equal(runs[0]["labels"], runs[1]["labels"])
    assert not torch.equal(runs[0]["t"], runs[2]["t"])
